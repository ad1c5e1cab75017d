"""Toy VLM / CLIP pretraining: texts, losses, configs, and a few real training steps of each."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pixpref.config import load_config
from pixpref.errors import PixprefError
from pixpref.pretrain import clip as pclip
from pixpref.pretrain import vlm as pvlm
from pixpref.toyworld.scene import Scene, caption, sample_scene

ROOT = Path(__file__).resolve().parent.parent


def test_caption_parses_back_to_scene_attributes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = sample_scene(rng, combos="all")
        assert pvlm.parse_caption(caption(s)) == pvlm.true_attributes(s)
    assert pvlm.parse_caption("a red star") is None


def test_compare_text_follows_scene_parameters():
    a = Scene("star", "red", size=0.28, cx=0.35, cy=0.5, bg_lightness=0.2, shade="pastel", outline="dark")
    b = Scene("circle", "blue", size=0.14, cx=0.60, cy=0.5, bg_lightness=0.8, shade="vivid")
    text = pvlm.compare_text(a, b)
    assert text.startswith("the first is larger, on a darker background, pastel not vivid, same texture")
    assert "outlined not plain" in text and "further left" in text and "higher" not in text
    assert pvlm.compare_text(b, a).startswith("the first is smaller, on a lighter background")


def test_multi_positive_loss_reduces_to_clip_loss():
    import torch.nn.functional as F

    torch.manual_seed(0)
    logits = torch.randn(6, 6)
    eye = torch.eye(6, dtype=torch.bool)
    target = torch.arange(6)
    clip_loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert torch.allclose(pclip.multi_positive_loss(logits, eye), clip_loss)
    both = eye.clone()
    both[0, 1] = both[1, 0] = True  # images 0 and 1 both fit texts 0 and 1
    assert not torch.allclose(pclip.multi_positive_loss(logits, both), clip_loss)


def test_shipped_configs_load_and_validate():
    from pixpref.pretrain.cli import stage_configs

    vstages = stage_configs("vlm", [])
    # the shipped VLM's four stages: the LM tasks, 600 more steps, a vision warm-up then a frozen tower, colour swap
    assert [c.steps for c in vstages] == [1100, 600, 1200, 1200]
    assert [c.freeze_vision for c in vstages] == [False, False, True, True]
    assert vstages[2].vision_steps == 8000 and vstages[3].vision_steps == 0 and vstages[3].caption_colour_swap == 0.3
    vcfg = vstages[0]
    (ccfg,) = stage_configs("clip", [])
    # 4 pairs = 8 images fit the toy LLaVA's positions
    assert vcfg.max_pairs == 4 and 8 * vcfg.model.image_tokens < vcfg.model.max_positions
    assert ccfg.model_name == "pixpref-toy-clip"
    with pytest.raises(PixprefError, match="valid keys"):
        load_config(None, pvlm.PretrainConfig, overrides=["stepz=3"])
    with pytest.raises(PixprefError, match="too small"):
        load_config(None, pvlm.PretrainConfig, overrides=["model.max_positions=64"])


def _log_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_vlm_pretrain_short_run(tmp_path):
    from pixpref.models.vlm import load_vlm

    cfg = load_config(None, pvlm.PretrainConfig, overrides=[
        "steps=4", "batch_size=4", "train_scenes=24", "tokenizer_texts=40", "eval_scenes=2", "log_every=1",
        "warmup_steps=2", "max_pairs=2", "model.vision_hidden=32", "model.vision_layers=1",
        "model.vision_heads=2", "model.vision_intermediate=64", "model.text_hidden=32", "model.text_layers=1",
        "model.text_heads=2", "model.text_intermediate=64", "model.vocab_size=300",
        "caption_weight=1", "compare_weight=1", "pairs_weight=1", "caption_colour_swap=0.5",
    ])
    metrics = pvlm.run(tmp_path, cfg)
    out = tmp_path / "vlm"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    rows = _log_rows(out / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4
    assert set(metrics["heldout_caption_accuracy"]) == set(pvlm.ATTRIBUTES)
    model, processor = load_vlm(out)
    assert model.config.get_text_config().hidden_size == 32
    # same seed -> same data, init and first loss (fixed seeds)
    cfg.steps, cfg.eval_scenes = 1, 0
    again = pvlm.run(tmp_path / "again", cfg)
    assert again["params"] == metrics["params"]
    assert _log_rows(tmp_path / "again" / "vlm" / "train_log.csv")[0]["loss"] == rows[0]["loss"]


def test_vlm_vision_warm_up_then_frozen_tower(tmp_path):
    """The warm-up trains the vision tower alone (logged as task 'vision'); with freeze_vision the LM
    stage leaves the tower as the warm-up left it and still trains the LM."""
    import torch
    from safetensors.torch import load_file

    small = ["batch_size=4", "train_scenes=24", "tokenizer_texts=40", "eval_scenes=0", "log_every=1",
             "warmup_steps=2", "max_pairs=2", "model.vision_hidden=32", "model.vision_layers=1",
             "model.vision_heads=2", "model.vision_intermediate=64", "model.text_hidden=32", "model.text_layers=1",
             "model.text_heads=2", "model.text_intermediate=64", "model.vocab_size=300"]
    base = pvlm.run(tmp_path / "a", load_config(None, pvlm.PretrainConfig, overrides=small + ["steps=1"]))
    assert base["vision_steps"] == 0
    first = tmp_path / "a" / "vlm"
    warm_cfg = load_config(None, pvlm.PretrainConfig, overrides=small + [
        "steps=3", "vision_steps=5", "vision_batch_size=8", f"init_from={first}", "freeze_vision=true"])
    pvlm.run(tmp_path / "b", warm_cfg)
    rows = _log_rows(tmp_path / "b" / "vlm" / "train_log.csv")
    assert [r["task"] for r in rows[:5]] == ["vision"] * 5 and all(np.isfinite(float(r["probe_loss"])) for r in rows[:5])
    assert len(rows) == 8
    before, after = load_file(str(first / "model.safetensors")), load_file(str(tmp_path / "b" / "vlm" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("vision_tower" in k for k in changed)
    assert any("language_model" in k for k in changed)
    # the frozen tower: a second run with the same warm-up but more LM steps saves the same tower weights
    warm_cfg.steps = 6
    pvlm.run(tmp_path / "c", warm_cfg)
    again = load_file(str(tmp_path / "c" / "vlm" / "model.safetensors"))
    tower = [k for k in after if "vision_tower" in k]
    assert tower and all(torch.equal(after[k], again[k]) for k in tower)
    with pytest.raises(PixprefError, match="vision_steps"):
        load_config(None, pvlm.PretrainConfig, overrides=["vision_steps=-1"])


def test_clip_pretrain_short_run_changes_weights(tmp_path):
    from pixpref.models.clip import create_clip, load_clip

    cfg = load_config(None, pclip.PretrainConfig, overrides=[
        "steps=3", "batch_size=8", "train_scenes=32", "eval_images=12", "log_every=1", "warmup_steps=1",
    ])
    metrics = pclip.run(tmp_path, cfg)
    out = tmp_path / "clip"
    assert (out / "open_clip_config.json").is_file() and (out / "model.safetensors").is_file()
    assert len(_log_rows(out / "train_log.csv")) == 3
    assert 0.0 <= metrics["heldout_content_top1"] <= 1.0 and metrics["heldout_n"] == 12
    trained, _, _ = load_clip(out)
    torch.manual_seed(cfg.seed)
    init, _, _ = create_clip(cfg.model_name)
    changed = [not torch.allclose(p.float(), q.half().float()) for p, q in
               zip(trained.parameters(), init.parameters())]
    assert sum(changed) / len(changed) > 0.9  # (almost) every tensor trained


def test_colour_swap_replaces_the_colour_word_without_loss_on_it():
    """caption_colour_swap: the swapped answer tokenizes as the plain answer with the colour's tokens
    replaced, and collate puts no label on those tokens (the shape word after them keeps its label)."""
    from pixpref.models.vlm import load_vlm

    _, processor = load_vlm("toy")
    tok = processor.tokenizer
    messages = pvlm._user([None, " " + pvlm.CAPTION_QUESTION])
    answer = "a large pastel red star, striped, outlined, at the top left, on a dark background"
    plain, n_prompt = pvlm.encode_example(processor, messages, answer)
    same, n_same, skip_same = pvlm.encode_with_swapped_word(processor, messages, answer, "red", "red")
    assert same == plain and n_same == n_prompt  # a no-op swap is the plain encoding
    ids, n, skip = pvlm.encode_with_swapped_word(processor, messages, answer, "red", "magenta")
    assert tok.decode(ids[n:], skip_special_tokens=True).strip() == answer.replace("red", "magenta")
    assert tok.decode([ids[i] for i in skip]).strip() == "magenta"
    _, _, labels = pvlm.collate([(ids, n, skip), (plain, n_prompt)], tok.pad_token_id)
    assert (labels[0, skip] == -100).all() and (labels[0, n:len(ids)] != -100).sum() == len(ids) - n - len(skip)
    star = skip[-1] + 1
    assert labels[0, star] == ids[star] and tok.decode([ids[star]]).strip() == "star"
    assert (labels[1, n_prompt:len(plain)] != -100).all()  # an example without positions: every answer token
    with pytest.raises(PixprefError, match="not a word"):
        pvlm.encode_with_swapped_word(processor, messages, answer, "blue", "red")
    with pytest.raises(PixprefError, match="caption_colour_swap"):
        load_config(None, pvlm.PretrainConfig, overrides=["caption_colour_swap=1.5"])
