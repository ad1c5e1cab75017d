"""Toy-world scorer labels: the dimension oracles, Bradley-Terry labels, the Bayes ceiling, pair sets."""

from __future__ import annotations

import numpy as np
import pytest

from pixpref.errors import PixprefError
from pixpref.scorer.toylabels import (
    ToyLabelConfig,
    ToyPairs,
    bayes_ceiling,
    draw_labels,
    make_pairs,
    make_personal_pairs,
    make_render_pairs,
    oracle_utilities,
    user_embedder,
)
from pixpref.toyworld.render import render
from pixpref.toyworld.scene import Scene

BASE = Scene("circle", "red", size=0.24, cx=0.5, cy=0.5, bg_lightness=0.9, shade="dark")


def utilities(*scenes: Scene, prompt: str = "a red circle") -> dict[str, np.ndarray]:
    images = np.stack([render(s, 32, np.random.default_rng(0)) for s in scenes])
    return oracle_utilities(images, [prompt] * len(scenes))


def test_blur_and_noise_lower_detail_only():
    u = utilities(BASE, BASE.replace(blur=1.2), BASE.replace(noise=0.15))
    assert u["detail"][0] > u["detail"][1] + 0.2 and u["detail"][0] > u["detail"][2] + 0.1
    assert (u["alignment"] == 1.0).all()  # still a red circle


def test_crisp_renders_tie_on_detail_and_blur_still_counts():
    """Crisp renders of different styles differ only by the blur fit's scatter, which the crisp floor absorbs;
    without the floor (crisp_sharpness=1) some pairs of them are decided on detail by that scatter alone."""
    rng = np.random.default_rng(0)
    from pixpref.toyworld.scene import sample_scene

    scenes = [sample_scene(rng, combos="all") for _ in range(60)]
    images = np.stack([render(s, 32, np.random.default_rng(i)) for i, s in enumerate(scenes)])
    prompts = [s.prompt(0) for s in scenes]
    floored = oracle_utilities(images, prompts)["detail"]
    raw = oracle_utilities(images, prompts, crisp_sharpness=1.0)["detail"]
    tie = ToyLabelConfig.tie_margin
    assert np.mean(np.abs(floored[::2] - floored[1::2]) < tie) >= 0.9
    assert np.mean(np.abs(raw[::2] - raw[1::2]) < tie) < np.mean(np.abs(floored[::2] - floored[1::2]) < tie)
    blurred = np.stack([render(s.replace(blur=0.5), 32, np.random.default_rng(i)) for i, s in enumerate(scenes)])
    assert (oracle_utilities(blurred, prompts)["detail"] < floored - tie).mean() >= 0.9  # 0.5 px still costs
    with pytest.raises(PixprefError, match="crisp_sharpness"):
        oracle_utilities(images[:1], prompts[:1], crisp_sharpness=0.0)


def test_wrong_colour_or_shape_lowers_alignment():
    u = utilities(BASE, BASE.replace(colour="blue"), BASE.replace(shape="square"),
                  BASE.replace(colour="blue", shape="square"))
    np.testing.assert_allclose(u["alignment"], [1.0, 0.5, 0.5, 0.0])
    assert u["overall"][0] > u["overall"][1] > u["overall"][3]


def test_aesthetics_prefers_centred_contrasting_objects():
    u = utilities(BASE, BASE.replace(cx=0.25, cy=0.25), BASE.replace(bg_lightness=0.1), BASE.replace(size=0.12))
    assert u["aesthetics"][0] > u["aesthetics"][1] + 0.1  # off-centre
    assert u["aesthetics"][0] > u["aesthetics"][2] + 0.1  # dark object on a dark background
    assert u["aesthetics"][0] > u["aesthetics"][3]  # small object


def test_bayes_ceiling_formula():
    p = np.array([0.9, 0.2, 0.5, 0.7, 0.6])
    labels = np.array([1.0, 0.0, 0.5, np.nan, 0.0])  # the tie and the unlabelled pair are left out
    assert bayes_ceiling(p, labels) == pytest.approx((0.9 + 0.8 + 0.6) / 3)
    assert np.isnan(bayes_ceiling(p, np.full(5, 0.5)))


def test_labels_follow_bradley_terry():
    rng = np.random.default_rng(0)
    u_a, u_b = np.full(20000, 0.53), np.full(20000, 0.5)
    p, labels = draw_labels(u_a, u_b, temperature=0.03, tie_margin=0.0, rng=rng)
    assert p[0] == pytest.approx(1 / (1 + np.exp(-1)))
    assert labels.mean() == pytest.approx(p[0], abs=0.015)
    _, tied = draw_labels(u_a, u_b, temperature=0.03, tie_margin=0.05, rng=rng)
    assert (tied == 0.5).all()


def test_render_pairs_have_partial_labels_and_round_trip(tmp_path):
    cfg = ToyLabelConfig(render_pairs=48, render_kinds=["blur", "colour"], label_keep=0.5, seed=3)
    pairs = make_pairs(cfg)
    assert pairs.images.shape == (48, 2, 32, 32, 3) and set(pairs.kinds) == {"blur", "colour"}
    kept = np.isfinite(pairs.labels["detail"]).mean()
    assert 0.2 < kept < 0.8  # about half the labels dropped
    blur = np.array([k == "blur" for k in pairs.kinds])
    # on blur pairs the sharper image wins on detail: P(a) far from 0.5 everywhere
    assert (np.abs(pairs.probs["detail"][blur] - 0.5) > 0.4).all()
    pairs.save(tmp_path / "p.npz")
    back = ToyPairs.load(tmp_path / "p.npz")
    assert back.prompts == pairs.prompts and np.array_equal(back.images, pairs.images)
    np.testing.assert_array_equal(back.labels["detail"], pairs.labels["detail"])


def test_personal_pairs_condition_on_other_pairs_of_the_same_user():
    cfg = ToyLabelConfig(render_pairs=0, users=6, pairs_per_user=12, user_encoder="oracle")
    seen = []

    def embed(users, contexts):
        seen.extend(contexts)
        return user_embedder("oracle")(users, contexts)

    pairs = make_personal_pairs(cfg, embed)
    assert len(seen) == len(pairs.embeddings) and pairs.embeddings.shape[1:] == (1, 18)
    for i in range(len(pairs)):
        ctx = seen[pairs.context[i]]
        assert len(ctx) == 4
        # the context holds other pairs: neither image of pair i appears in it
        assert not any(np.array_equal(pairs.images[i, 0], c[1]) or np.array_equal(pairs.images[i, 0], c[2])
                       for c in ctx)
    assert set(np.unique(pairs.labels["personal"])) <= {0.0, 0.5, 1.0}
    unseen = make_personal_pairs(ToyLabelConfig(render_pairs=0, users=6, pairs_per_user=12, user_split="unseen",
                                                user_encoder="oracle"))
    assert len(unseen) == 8 and (unseen.context == 0).all()  # 1 unseen user: 4 context + 8 held-out


def test_config_errors_list_valid_options():
    with pytest.raises(PixprefError, match="unknown render pair kind 'fog'.*blur"):
        ToyLabelConfig(render_kinds=["fog"])
    with pytest.raises(PixprefError, match="temperature"):
        ToyLabelConfig(temperature=0)


def test_oracle_pair_shift_script_reports_each_kind(tmp_path, capsys):
    """scripts/oracle_pair_shift.py: a wrong colour moves only alignment, a degradation always moves detail,
    and every kind gets a row with each dimension's decided share."""
    import importlib.util
    import json
    from pathlib import Path

    from pixpref.scorer.toylabels import ORACLE_DIMENSIONS, RENDER_KINDS

    path = Path(__file__).resolve().parents[1] / "scripts" / "oracle_pair_shift.py"
    spec = importlib.util.spec_from_file_location("oracle_pair_shift", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--n", "12", "--json", str(tmp_path / "r.json")]) == 0
    rows = {r["kind"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert set(rows) == set(RENDER_KINDS)
    assert all(0.0 <= rows[k][d]["decided"] <= 1.0 for k in rows for d in ORACLE_DIMENSIONS)
    assert rows["colour"]["alignment"]["decided"] == 1.0 and rows["colour"]["aesthetics"]["decided"] == 0.0
    assert rows["blur"]["detail"]["decided"] == 1.0 and rows["noise"]["detail"]["decided"] == 1.0
    assert rows["position"]["features"]["cx"] > rows["blur"]["features"]["cx"]
    assert "colour" in capsys.readouterr().out
    # read on the undegraded renders (the labels' default), a degradation moves detail and nothing else
    assert mod.main(["--n", "12", "--content-from", "clean", "--json", str(tmp_path / "c.json")]) == 0
    clean = {r["kind"]: r for r in json.loads((tmp_path / "c.json").read_text())["rows"]}
    for kind in ("blur", "noise"):
        assert clean[kind]["aesthetics"]["decided"] == clean[kind]["alignment"]["decided"] == 0.0
        assert clean[kind]["detail"]["decided"] == 1.0


def test_degradations_are_labelled_on_detail_only_when_content_is_read_clean():
    """content_from: clean reads aesthetics and alignment on the undegraded pixels, so a blur / noise pair
    (one scene or one sample, degraded) is a tie on both; read on the shown pixels, some of them are decided."""
    cfg = dict(render_pairs=60, render_kinds=["blur", "noise"], label_keep=1.0, seed=4)
    clean, shown = make_render_pairs(ToyLabelConfig(**cfg)), make_render_pairs(ToyLabelConfig(**cfg, content_from="pixels"))
    np.testing.assert_array_equal(clean.images, shown.images)  # the same pairs, only the labels differ
    for d in ("aesthetics", "alignment"):
        assert (clean.labels[d] == 0.5).all()
    assert (shown.labels["aesthetics"] != 0.5).mean() > 0.1
    assert (clean.labels["detail"] != 0.5).mean() > 0.9 and np.array_equal(clean.labels["detail"] != 0.5,
                                                                             shown.labels["detail"] != 0.5)
    with pytest.raises(PixprefError, match="content_from.*clean.*pixels"):
        ToyLabelConfig(content_from="scene")
