"""train/train_scorer.py: a short run on tiny toy data lowers the loss and writes a loadable scorer;
config errors; saving only the head with a checked reference to the backbone weights."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pixpref.config import load_config
from pixpref.errors import PixprefError
from pixpref.scorer.api import PreferenceScorer
from pixpref.scorer.benchmarks import score_pairs
from pixpref.scorer.model import ScorerConfig, ScorerModel
from pixpref.scorer.toylabels import ToyPairs

REPO = Path(__file__).resolve().parent.parent
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def load_script():
    spec = importlib.util.spec_from_file_location("train_scorer", REPO / "train" / "train_scorer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def overrides(backbone: str, out: Path, steps: int = 100) -> list[str]:
    return [f"model.backbone={backbone}", "model.user_dim=18", "model.cross_heads=2", "model.zero_init=false",
            "model.unfreeze_last_blocks=1", "data.render_pairs=96", "data.model_pairs=0", "data.users=10",
            "data.pairs_per_user=8", "data.user_encoder=oracle", "data.label_keep=1.0",
            f"train.steps={steps}", "train.batch_size=16", "train.personal_batch_size=8", "train.lr=3e-3",
            "train.warmup_steps=2", "train.val_every=50", "train.val_fraction=0.15", "train.threads=1",
            "train.include_backbone=true", "train.save_fp16=false", f"out_dir={out}"]


def mean_loss(model: ScorerModel, pairs: ToyPairs) -> float:
    """Bradley-Terry loss over all labelled pairs and dimensions."""
    dims = pairs.dimensions
    scores = score_pairs(model, pairs, dims)
    losses = []
    for d in dims:
        ok = np.isfinite(pairs.labels[d]) & np.isfinite(scores[d][0])
        z = torch.as_tensor(scores[d][0][ok] - scores[d][1][ok])
        losses.append(torch.nn.functional.binary_cross_entropy_with_logits(
            z, torch.as_tensor(pairs.labels[d][ok])).item())
    return float(np.mean(losses))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "clip.json").write_text(json.dumps(TINY_CLIP))
    script = load_script()
    out = root / "run"
    result = script.main(["--config", str(REPO / "configs/scorer/train_toy.yaml"),
                          *[a for o in overrides(str(root / "clip.json"), out) for a in ("--set", o)]])
    return script, out, result


def test_short_run_lowers_the_loss_and_saves_a_loadable_scorer(run):
    script, out, result = run
    assert (out / "loss_log.jsonl").is_file() and (out / "val.json").is_file()
    rows = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 99 and all(np.isfinite(r["loss"]) for r in rows)
    val = result["val"][-1]
    assert set(val) >= {"aesthetics", "alignment", "detail", "overall", "personal"}
    pairs = ToyPairs.load(out / "pairs.npz")
    trained = PreferenceScorer.from_pretrained(out / "scorer").model
    cfg = load_config(out / "train_config.json", script.TrainScorerConfig)
    torch.manual_seed(cfg.seed)
    initial = ScorerModel.from_config(cfg.model)
    assert mean_loss(trained, pairs) < mean_loss(initial, pairs) - 0.05


def test_init_from_continues_a_saved_scorer_and_refuses_another_config(run, tmp_path):
    script, out, _ = run
    pairs = ToyPairs.load(out / "pairs.npz")
    trained = PreferenceScorer.from_pretrained(out / "scorer").model
    args = [a for o in overrides(str(out.parent / "clip.json"), tmp_path / "more", steps=2) for a in ("--set", o)]
    script.main(["--config", str(REPO / "configs/scorer/train_toy.yaml"), *args,
                 "--set", f"train.init_from={out / 'scorer'}", "--set", "train.lr=1e-9", "--set", "train.backbone_lr=0"])
    again = PreferenceScorer.from_pretrained(tmp_path / "more" / "scorer").model
    assert abs(mean_loss(again, pairs) - mean_loss(trained, pairs)) < 1e-3  # it started from the trained weights
    with pytest.raises(PixprefError, match="init_from.*cross_layers"):
        script.main(["--config", str(REPO / "configs/scorer/train_toy.yaml"), *args,
                     "--set", f"train.init_from={out / 'scorer'}", "--set", "model.cross_layers=1"])


def test_init_from_may_unfreeze_the_whole_backbone(run, tmp_path):
    """A fine-tune may change which backbone parts train: every weight is carried over, all of it trains."""
    script, out, _ = run
    saved = PreferenceScorer.from_pretrained(out / "scorer").model
    args = [a for o in overrides(str(out.parent / "clip.json"), tmp_path / "all", steps=1) for a in ("--set", o)]
    cfg = load_config(REPO / "configs/scorer/train_toy.yaml", script.TrainScorerConfig,
                      [*args[1::2], f"train.init_from={out / 'scorer'}", "model.freeze_backbone=false",
                       "model.unfreeze_last_blocks=0"])
    model = script.init_model(cfg)
    assert all(p.requires_grad for n, p in model.clip.named_parameters() if n != "logit_scale")
    theirs = saved.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, theirs[name]), name


def test_config_errors_list_valid_options(run):
    script, _, _ = run
    path = REPO / "configs/scorer/train_toy.yaml"
    with pytest.raises(PixprefError, match="unknown dimension 'beauty'.*aesthetics.*personal"):
        load_config(path, script.TrainScorerConfig, ["model.dimensions=[beauty, overall]"])
    with pytest.raises(PixprefError, match="unknown config key 'train.learning_rate'.*valid keys.*lr"):
        load_config(path, script.TrainScorerConfig, ["train.learning_rate=1e-3"])
    cfg = load_config(path, script.TrainScorerConfig, ["train.lr=3e-4"])
    assert cfg.train.lr == 3e-4 and cfg.model.user_dim == 192


def test_head_only_save_refers_to_the_backbone_file(tmp_path):
    from safetensors.torch import save_file

    from pixpref.scorer.model import build_backbone

    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_name": "tiny", "model_cfg": TINY_CLIP}))
    torch.manual_seed(0)
    clip, _ = build_backbone(TINY_CLIP)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(folder / "model.safetensors"))
    torch.manual_seed(1)
    scorer = PreferenceScorer.from_config(ScorerConfig(backbone=str(folder), user_dim=8, cross_heads=2,
                                                       zero_init=False, unfreeze_last_blocks=1))
    full = scorer.save_pretrained(tmp_path / "full")
    part = scorer.save_pretrained(tmp_path / "part", include_backbone=False)
    assert (part / "model.safetensors").stat().st_size < 0.7 * (full / "model.safetensors").stat().st_size
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = scorer.score(images, "a red circle", progress=False)
    after = PreferenceScorer.from_pretrained(part).score(images, "a red circle", progress=False)
    for d in before:
        torch.testing.assert_close(before[d], after[d])
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    state["visual.conv1.weight"] = state["visual.conv1.weight"] + 1.0
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(PixprefError, match="SHA-256"):
        PreferenceScorer.from_pretrained(part)
