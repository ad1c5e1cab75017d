"""``pixpref score``: JSON lines per image, folders, prompt files, exit code 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixpref.cli import main
from pixpref.personalize.embeddings import save_user_embedding
from pixpref.scorer.api import PreferenceScorer
from pixpref.scorer.model import ScorerConfig

TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    (root / "tiny_clip.json").write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(0)
    config = ScorerConfig(
        backbone=str(root / "tiny_clip.json"), user_dim=16, cross_layers=2, cross_heads=4, zero_init=False
    )
    scorer = PreferenceScorer.from_config(config)
    scorer.save_pretrained(root / "scorer")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    (images / "notes.txt").write_text("not an image")
    (root / "prompts.txt").write_text("a red circle\na blue square\n\na green star\n")
    save_user_embedding(root / "USER.safetensors", torch.randn(3, 16))
    return {"root": root, "scorer": root / "scorer", "images": images, "user": root / "USER.safetensors"}


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_score_folder_json(setup, capsys):
    rc, out, _ = run(
        [
            "score",
            "--images",
            str(setup["images"]),
            "--prompt",
            "a red circle",
            "--model",
            str(setup["scorer"]),
            "--json",
        ],
        capsys,
    )
    assert rc == 0
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [Path(r["image"]).name for r in rows] == ["img0.png", "img1.png", "img2.png"]
    assert all(set(r["scores"]) == {"aesthetics", "alignment", "detail", "overall"} for r in rows)
    # the CLI gives the same numbers as the API
    api = PreferenceScorer.from_pretrained(setup["scorer"]).score(
        [r["image"] for r in rows], "a red circle", progress=False
    )
    for i, r in enumerate(rows):
        assert r["scores"]["overall"] == pytest.approx(float(api["overall"][i]), abs=1e-6)


def test_score_prompts_file_dimensions_and_user(setup, capsys):
    files = [str(setup["images"] / f"img{i}.png") for i in range(3)]
    argv = [
        "score",
        "--images",
        *files,
        "--prompts",
        str(setup["root"] / "prompts.txt"),
        "--model",
        str(setup["scorer"]),
        "--dimensions",
        "detail,personal",
        "--user",
        str(setup["user"]),
        "--json",
    ]
    rc, out, _ = run(argv, capsys)
    assert rc == 0
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["prompt"] for r in rows] == ["a red circle", "a blue square", "a green star"]
    assert all(list(r["scores"]) == ["detail", "personal"] for r in rows)
    rc, out, _ = run(argv[:-1], capsys)  # table output
    assert rc == 0 and "personal" in out.splitlines()[0] and len(out.strip().splitlines()) == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--images", "MISSING.png", "--prompt", "x"], "image path not found"),
        (["--images", "IMAGES", "--prompt", "x", "--dimensions", "beauty"], "unknown dimension 'beauty'"),
        (["--images", "IMAGES", "--prompt", "x", "--dimensions", "personal"], "personal.*needs a user"),
        (["--images", "IMAGES/img0.png", "--prompts", "PROMPTS"], "3 prompts for 1 images"),
        (["--images", "IMAGES/notes.txt", "--prompt", "x"], "cannot read image file"),
        (["--images", "IMAGES", "--prompt", "x", "--model", "nowhere"], "unknown scorer 'nowhere'"),
    ],
)
def test_bad_input_exits_2_with_one_line(setup, capsys, extra, message):
    import re

    extra = [
        a.replace("IMAGES", str(setup["images"])).replace("PROMPTS", str(setup["root"] / "prompts.txt"))
        for a in extra
    ]
    if "--model" not in extra:
        extra += ["--model", str(setup["scorer"])]
    rc, out, err = run(["score", *extra, "--json"], capsys)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("pixpref: error:")
    assert re.search(message, err), err
