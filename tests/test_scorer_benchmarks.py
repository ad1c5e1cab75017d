"""Public test-set readers and accuracies (Pick-a-Pic v2 parquet, HPD v2 test.json) on tiny fixture files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import encode, solid, write_raw_pickapic
from PIL import Image

from pixpref.errors import PixprefError
from pixpref.scorer.api import PreferenceScorer
from pixpref.scorer.benchmarks import (
    accuracy_against,
    hpdv2_accuracy,
    pickapic_accuracy,
    rank_agreement,
    read_hpdv2,
)
from pixpref.scorer.model import ScorerConfig

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
COLOURS = [(220, 20, 20), (20, 20, 220), (20, 200, 20), (240, 240, 240), (10, 10, 10)]


@pytest.fixture(scope="module")
def scorer(tmp_path_factory) -> PreferenceScorer:
    path = tmp_path_factory.mktemp("clip") / "tiny.json"
    path.write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(0)
    return PreferenceScorer.from_config(ScorerConfig(backbone=str(path), dimensions=["overall"], user_dim=0,
                                                     cross_heads=2, zero_init=False))


def test_pickapic_accuracy_counts_ties_half(scorer, tmp_path):
    rows, truth = [], []
    for i in range(8):
        a, b = COLOURS[i % 5], COLOURS[(i + 1) % 5]
        label = (1.0, 0.0) if i % 3 == 0 else ((0.0, 1.0) if i % 3 == 1 else (0.5, 0.5))
        rows.append(dict(caption=f"prompt {i}", jpg_0=encode(solid(a, 32)), jpg_1=encode(solid(b, 32)),
                         label_0=label[0], label_1=label[1], user_id=i))
        truth.append((a, b, label[0], f"prompt {i}"))
    path = write_raw_pickapic(rows, tmp_path / "test_unique-00000.parquet")
    result = pickapic_accuracy(scorer, path, batch_size=3)
    credit, decided = 0.0, []
    for a, b, l0, prompt in truth:  # independent computation with the scorer on the raw images
        s = scorer.score([solid(a, 32), solid(b, 32)], prompt, ["overall"], progress=False)["overall"]
        if l0 == 0.5:
            credit += 0.5
        else:
            ok = float((s[0] > s[1]) == (l0 == 1.0))
            credit += ok
            decided.append(ok)
    assert result["pairs"] == 8 and result["ties"] == 2
    assert result["accuracy"] == pytest.approx(credit / 8, abs=1e-6)
    assert result["accuracy_decided"] == pytest.approx(np.mean(decided), abs=1e-6)
    assert pickapic_accuracy(scorer, path, limit=4)["pairs"] == 4


def write_hpd(tmp_path: Path, entries: list[dict]) -> Path:
    folder = tmp_path / "test"
    folder.mkdir(exist_ok=True)
    for k, colour in enumerate(COLOURS):
        Image.fromarray(solid(colour, 32)).save(folder / f"{k}.png")
    (tmp_path / "test.json").write_text(json.dumps(entries))
    return tmp_path / "test.json"


def test_hpdv2_reader_and_accuracy(scorer, tmp_path):
    entries = [
        {"prompt": "a red square", "image_path": ["0.png", "1.png", "2.png"], "rank": [1, 3, 2]},
        {"prompt": "a dark night", "image_path": ["3.png", "4.png"], "raw_annotations": [[1, 2], [2, 1], [2, 1]]},
    ]
    meta = write_hpd(tmp_path, entries)
    read = read_hpdv2(meta, tmp_path / "test")
    assert read[1]["rank"] == pytest.approx([5 / 3, 4 / 3])
    result = hpdv2_accuracy(scorer, meta, tmp_path / "test")
    expected = []
    for e in read:
        s = scorer.score([str(p) for p in e["images"]], e["prompt"], ["overall"], progress=False)["overall"]
        expected.append(rank_agreement(s.numpy(), np.array(e["rank"]))[0])
    assert result["prompts"] == 2 and result["pairs"] == 4
    assert result["accuracy"] == pytest.approx(np.mean(expected))
    bad = write_hpd(tmp_path, [{"prompt": "x", "image_path": ["0.png", "missing.png"], "rank": [1, 2]}])
    with pytest.raises(PixprefError, match="image not found.*missing.png"):
        read_hpdv2(bad, tmp_path / "test")
    no_rank = write_hpd(tmp_path, [{"prompt": "x", "image_path": ["0.png", "1.png"]}])
    with pytest.raises(PixprefError, match="'rank' or 'raw_annotations'"):
        read_hpdv2(no_rank, tmp_path / "test")


def test_rank_agreement_and_pair_accuracy():
    assert rank_agreement(np.array([3.0, 2.0, 1.0]), np.array([1, 2, 3])) == (1.0, 3)
    assert rank_agreement(np.array([1.0, 2.0, 3.0]), np.array([1, 2, 3])) == (0.0, 3)
    assert rank_agreement(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 2])) == (0.0, 2)  # the rank tie is left out
    acc, n = accuracy_against(np.array([1.0, 0.0, 0.5, np.nan, 1.0]), np.array([2.0, 2.0, 0.0, 1.0, 1.0]),
                              np.array([1.0, 1.0, 5.0, 0.0, 1.0]))
    assert n == 3 and acc == pytest.approx((1 + 0 + 0.5) / 3)
