"""The pixel oracle recovers scene parameters and content from rendered images (floors from the issue)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pixpref.errors import PixprefError
from pixpref.toyworld.oracle import FEATURES, analyse, detect, measure, parse_prompt, prompt_adherence
from pixpref.toyworld.render import render
from pixpref.toyworld.scene import COLOURS, SHAPES, Scene, sample_scene

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "oracle_accuracy.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("oracle_accuracy", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def report():
    return _load_script().oracle_report(n=800, seed=1, size=32, joint=False)


def test_detectors_meet_floor(report):
    for name, acc in report["detectors"].items():
        assert acc >= 0.98, f"{name} detector accuracy {acc:.3f} < 0.98"


def test_feature_correlations_meet_floor(report):
    low = {k: round(v, 3) for k, v in report["correlations"].items() if not v >= 0.95}
    assert not low, f"correlations below 0.95: {low}"


def test_measure_shapes_ranges_and_feature_names():
    rng = np.random.default_rng(0)
    images = np.stack([render(sample_scene(rng), 32) for _ in range(6)])
    feats = measure(images)
    assert tuple(feats) == FEATURES
    for name, v in feats.items():
        assert v.shape == (6,), name
        assert np.all((v >= 0) & (v <= 1)), name
    # a single (H, W, 3) image is a batch of one
    one = measure(images[0])
    assert all(one[k].shape == (1,) for k in FEATURES)
    np.testing.assert_allclose(one["size"][0], feats["size"][0])


def test_works_at_64_pixels():
    rng = np.random.default_rng(3)
    scenes = [sample_scene(rng, combos="all") for _ in range(60)]
    images = np.stack([render(s, 64) for s in scenes])
    feats, colours, shapes = analyse(images)
    assert np.mean([c == s.colour for c, s in zip(colours, scenes, strict=True)]) >= 0.95
    assert np.mean([c == s.shape for c, s in zip(shapes, scenes, strict=True)]) >= 0.95
    assert np.corrcoef(feats["size"], [s.size for s in scenes])[0, 1] > 0.95
    assert np.corrcoef(feats["cx"], [s.cx for s in scenes])[0, 1] > 0.95


def test_blank_and_noise_images_do_not_crash():
    blank = np.full((2, 32, 32, 3), 128, dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    black = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    for images in (blank, noise, black):
        feats, colours, shapes = analyse(images)
        assert all(np.all(np.isfinite(v)) for v in feats.values())
    assert detect(blank) == (["none", "none"], ["none", "none"])
    assert measure(blank)["area"].tolist() == [0.0, 0.0]
    assert measure(noise)["noise"].min() > 0.9  # uniform noise is as noisy as it gets


def test_single_factor_changes_move_the_right_feature():
    base = Scene("circle", "red", size=0.2, bg_lightness=0.5)
    pairs = {
        "size": base.replace(size=0.28),
        "cx": base.replace(cx=0.62),
        "bg_lightness": base.replace(bg_lightness=0.9),
        "texture": base.replace(texture="stripes"),
        "outline": base.replace(outline="dark"),
        "obj_lightness": base.replace(shade="pastel"),
        "noise": base.replace(noise=0.1),
    }
    f0 = measure(render(base))
    for name, scene in pairs.items():
        f1 = measure(render(scene, rng=np.random.default_rng(0)))
        assert f1[name][0] > f0[name][0] + 0.1, name
    blurred = measure(render(base.replace(blur=1.2)))
    assert blurred["sharpness"][0] < f0["sharpness"][0] - 0.3


def test_prompt_adherence_and_parsing():
    rng = np.random.default_rng(5)
    scenes = [sample_scene(rng, shape=s, colour=c) for s, c in (("star", "blue"), ("cross", "orange"))]
    images = np.stack([render(s) for s in scenes])
    assert prompt_adherence(images, ["a photo of a blue star", "a cross in orange"]).tolist() == [True, True]
    assert prompt_adherence(images, ["a blue cross", "an orange cross"]).tolist() == [False, True]
    assert parse_prompt("A Picture of one GREEN triangle") == ("green", "triangle")
    with pytest.raises(PixprefError, match="valid options: .*blue"):
        parse_prompt("a crimson star")
    with pytest.raises(PixprefError, match="valid options: .*circle"):
        parse_prompt("a red blob")
    with pytest.raises(PixprefError, match="2 prompts"):
        prompt_adherence(images[:1], ["a red star", "a red star"])


def test_bad_input_is_a_user_error():
    with pytest.raises(PixprefError, match="uint8"):
        measure(np.zeros((1, 32, 32, 3), dtype=np.float32))
    with pytest.raises(PixprefError, match="shape"):
        measure(np.zeros((32, 32), dtype=np.uint8))


def test_vocabulary_is_covered():
    # every colour and shape can be produced by the detectors
    rng = np.random.default_rng(9)
    scenes = [sample_scene(rng, shape=s, colour=c, combos="all") for s in SHAPES for c in COLOURS]
    colours, shapes = detect(np.stack([render(s) for s in scenes]))
    assert set(colours) == set(COLOURS)
    assert set(shapes) == set(SHAPES)
