"""PreferenceScorer: input forms, batching, save/load, pickle refusal, bad inputs, compare (tiny random CLIP)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pixpref.errors import PixprefError
from pixpref.scorer.api import PreferenceScorer, wilson_interval
from pixpref.scorer.model import ScorerConfig

TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TEXT_DIMS = ["aesthetics", "alignment", "detail", "overall"]


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> PreferenceScorer:
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(0)
    config = ScorerConfig(backbone=str(path), user_dim=16, cross_layers=2, cross_heads=4, zero_init=False)
    return PreferenceScorer.from_config(config)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Five random uint8 images (N, H, W, 3), not at the model size (40 x 48 -> resized and cropped)."""
    return np.random.default_rng(0).integers(0, 256, size=(5, 40, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def saved(scorer: PreferenceScorer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scorer.save_pretrained(tmp_path_factory.mktemp("scorer") / "scorer")


PROMPTS = ["a red circle", "a blue square", "a green star", "a photo of a cyan cross", "a yellow triangle"]


def test_score_shapes_and_default_dimensions(scorer, images):
    out = scorer.score(images, PROMPTS, progress=False)
    assert list(out) == TEXT_DIMS  # personal only with a user
    for v in out.values():
        assert v.shape == (5,) and v.dtype == torch.float32 and v.device.type == "cpu"
    out = scorer.score(images, PROMPTS, user=torch.randn(3, 16), progress=False)
    assert list(out) == [*TEXT_DIMS, "personal"]


def test_input_forms_agree(scorer, images, tmp_path):
    ref = scorer.score(images, PROMPTS, "overall", progress=False)["overall"]
    pil = [Image.fromarray(a) for a in images]
    paths = []
    for i, im in enumerate(pil):
        im.save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    as_uint8 = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8
    forms = {
        "pil": pil,
        "paths": [str(p) for p in paths],
        "uint8 tensor": as_uint8,
        "float64 tensor": as_uint8.double() / 255,
        "list of arrays": list(images),
    }
    for name, form in forms.items():
        got = scorer.score(form, PROMPTS, ["overall"], progress=False)["overall"]
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4, msg=name)


def test_batched_equals_one_by_one(scorer, images):
    user = torch.randn(5, 3, 16)
    batched = scorer.score(images, PROMPTS, user=user, batch_size=4, progress=False)
    for i in range(5):
        single = scorer.score(images[i : i + 1], [PROMPTS[i]], user=user[i], progress=False)
        for dim, scores in batched.items():
            torch.testing.assert_close(single[dim][0], scores[i], atol=1e-5, rtol=1e-5)


def test_progress_bar_on_large_batches(scorer, images, capsys):
    many = np.concatenate([images] * 2)
    scorer.score(many, "a red circle", ["detail"], batch_size=3, progress=True)
    assert "scoring" in capsys.readouterr().err
    scorer.score(many, "a red circle", ["detail"], batch_size=32, progress=True)
    assert "scoring" not in capsys.readouterr().err


def test_changing_the_prompt_changes_scores(scorer, images):
    a = scorer.score(images, "a red circle", ["alignment"], progress=False)["alignment"]
    b = scorer.score(images, "a blue square", ["alignment"], progress=False)["alignment"]
    assert not torch.allclose(a, b)


def test_save_load_round_trip(scorer, images, saved):
    user = torch.randn(4, 16)
    before = scorer.score(images, PROMPTS, user=user, progress=False)
    loaded = PreferenceScorer.from_pretrained(saved)
    after = loaded.score(images, PROMPTS, user=user, progress=False)
    for dim in before:
        assert torch.equal(before[dim], after[dim]), dim
    meta = json.loads((saved / "scorer_config.json").read_text())
    assert meta["config"]["cross_layers"] == 2 and meta["backbone_model_cfg"]["embed_dim"] == 64
    with pytest.raises(PixprefError, match="already exists.*overwrite"):
        scorer.save_pretrained(saved)


def test_fp16_save_is_smaller_and_close(scorer, images, saved, tmp_path):
    half = scorer.save_pretrained(tmp_path / "half", fp16=True)
    assert (half / "model.safetensors").stat().st_size < 0.6 * (saved / "model.safetensors").stat().st_size
    loaded = PreferenceScorer.from_pretrained(half)
    assert loaded.dtype == torch.float32
    a = scorer.score(images, PROMPTS, ["overall"], progress=False)["overall"]
    b = loaded.score(images, PROMPTS, ["overall"], progress=False)["overall"]
    torch.testing.assert_close(a, b, atol=0.05, rtol=0.01)


def test_pickled_model_is_refused(scorer, tmp_path):
    pickled = tmp_path / "scorer.pt"
    torch.save(scorer.model, pickled)  # a whole pickled module
    with pytest.raises(PixprefError, match="weights_only=True.*safetensors"):
        PreferenceScorer.from_pretrained(pickled)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "scorer_config.json").write_text("{}")
    (folder / "model.pt").write_bytes(pickled.read_bytes())
    with pytest.raises(PixprefError, match="pickled.*safetensors"):
        PreferenceScorer.from_pretrained(folder)


def test_load_errors(saved, tmp_path):
    with pytest.raises(PixprefError, match="unknown scorer 'nowhere'.*toy"):
        PreferenceScorer.from_pretrained("nowhere")
    with pytest.raises(PixprefError, match="no scorer_config.json"):
        PreferenceScorer.from_pretrained(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "scorer_config.json").write_text((saved / "scorer_config.json").read_text())
    save_file({"logit_scale": torch.zeros(())}, str(broken / "model.safetensors"))
    with pytest.raises(PixprefError, match="does not match.*missing"):
        PreferenceScorer.from_pretrained(broken)


def test_bad_inputs_have_clear_errors(scorer, images, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png at all")
    nan_user = torch.randn(3, 16)
    nan_user[1, 2] = float("nan")
    cases = [
        (
            dict(images=images, prompts=PROMPTS, dimensions=["beauty"]),
            r"unknown dimension 'beauty'.*aesthetics",
        ),
        (dict(images=[], prompts=[]), "empty image list"),
        (dict(images=images, prompts=PROMPTS[:3]), "3 prompts for 5 images"),
        (dict(images=[str(corrupt)], prompts="x"), "cannot read image file .*corrupt.png"),
        (dict(images=[str(tmp_path / "missing.png")], prompts="x"), "not found"),
        (dict(images=images, prompts=PROMPTS, dimensions=["personal"]), "personal.*needs a user"),
        (dict(images=images, prompts=PROMPTS, dimensions="personal", user=nan_user), "NaN"),
        (dict(images=images, prompts=PROMPTS, dimensions="personal", user=torch.randn(3, 8)), "width 8.*16"),
        (dict(images=images, prompts=PROMPTS, dimensions="personal", user=torch.randn(2, 3, 16)), "2 users"),
        (dict(images=torch.rand(2, 3, 8, 8) * 2, prompts="x"), r"\[0, 1\]"),
        (dict(images=images, prompts=PROMPTS, batch_size=0), "batch_size"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(PixprefError, match=pattern):
            scorer.score(progress=False, **kwargs)


def test_user_from_file(scorer, images, tmp_path):
    from pixpref.personalize.embeddings import save_user_embedding

    user = torch.randn(3, 16)
    path = save_user_embedding(tmp_path / "USER.safetensors", user)
    from_file = scorer.score(images, PROMPTS, ["personal"], user=str(path), progress=False)["personal"]
    from_tensor = scorer.score(images, PROMPTS, ["personal"], user=user, progress=False)["personal"]
    assert torch.equal(from_file, from_tensor)
    save_file({"other": user}, str(tmp_path / "other.safetensors"))
    with pytest.raises(PixprefError, match="user_embedding"):
        scorer.score(images, PROMPTS, ["personal"], user=tmp_path / "other.safetensors", progress=False)


def test_compare_win_rates(scorer, images):
    rates = scorer.compare(images, images, PROMPTS, ["overall", "detail"], progress=False)
    for r in rates.values():  # identical sets: all ties -> 0.5
        assert (r.ties, r.wins, r.n, r.win_rate) == (5, 0, 5, 0.5)
        assert r.ci_low < 0.5 < r.ci_high
    other = images[::-1].copy()
    scores_a = scorer.score(images, PROMPTS, ["overall"], progress=False)["overall"]
    scores_b = scorer.score(other, PROMPTS, ["overall"], progress=False)["overall"]
    r = scorer.compare(images, other, PROMPTS, "overall", progress=False)["overall"]
    assert r.wins == int((scores_a > scores_b).sum()) and r.wins + r.ties + r.losses == 5
    with pytest.raises(PixprefError, match="as many images"):
        scorer.compare(images, images[:2], PROMPTS, progress=False)


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    for k, n in [(0, 10), (3, 10), (37, 50), (50, 50)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        low, high = wilson_interval(k, n)
        assert low == pytest.approx(ci.low, abs=1e-9) and high == pytest.approx(ci.high, abs=1e-9)
    low, high = wilson_interval(2.5, 5)  # a half-tie count sits symmetric around 0.5
    assert low == pytest.approx(1 - high)


def test_shipped_toy_scorer_beats_plain_clip_on_held_out_renderer_pairs():
    """Floors for the shipped toy scorer on renderer pairs it never saw (another seed, all combos): each
    conditioned dimension beats the same backbone read as plain CLIP, and stays near its measured accuracy
    (``scripts/eval_scorer.py``, 1500 renderer pairs, detail oracle with the crisp floor, aesthetics and
    alignment read on the undegraded pixels: aesthetics 0.904, alignment 0.962, detail 0.935; these 600
    pairs: 0.873 / 0.973 / 0.945). Each floor is the measured level minus the sampling noise of 600 pairs."""
    from pixpref.scorer import PreferenceScorer
    from pixpref.scorer.benchmarks import evaluate_pairs, plain_clip_model, score_pairs
    from pixpref.scorer.toylabels import ToyLabelConfig, make_pairs

    model = PreferenceScorer.from_pretrained("toy").model
    dims = ["aesthetics", "alignment", "detail"]
    pairs = make_pairs(ToyLabelConfig(seed=777, combos="all", render_pairs=600, model_pairs=0, label_keep=1.0,
                                      users=0))
    ours = evaluate_pairs(model, pairs, dims)
    clip = evaluate_pairs(model, pairs, dims, scores=score_pairs(plain_clip_model(model), pairs, dims, clip_baseline=True))
    floors = {"aesthetics": 0.82, "alignment": 0.93, "detail": 0.91}
    for d in dims:
        assert ours[d]["accuracy"] >= floors[d], (d, ours[d], floors[d])
    for d in ("aesthetics", "detail"):  # where the condition has to read more than the prompt
        assert ours[d]["accuracy"] > clip[d]["accuracy"] + 0.05, (d, ours[d], clip[d])
