"""Train the multi-dimensional preference scorer on toy-world pairs labelled by the pixel oracles.

The shipped toy scorer (pixpref/pretrained/toy/scorer) is made by exactly this command (~10 min, 2 cores):

    OMP_NUM_THREADS=2 nice accelerate launch --config_file configs/accelerate/cpu.yaml \\
        train/train_scorer.py --config configs/scorer/train_toy.yaml

(``python train/train_scorer.py --config ...`` runs the same on one process.) Overrides:
``--set train.lr=3e-4 --set data.render_pairs=2000``; an unknown key is an error that lists the valid keys.

Reads top to bottom: config -> data (toy pairs: renders, degraded renders, base-model samples, synthetic
users with user embeddings; see pixpref/scorer/toylabels.py) -> model (frozen CLIP backbone, optionally its
last blocks, plus the condition-masked head) -> optimizer -> loop (Bradley-Terry loss per labelled
dimension, ties as 0.5 targets) with validation accuracy per dimension -> save.

Outputs in ``out_dir``: ``pairs.npz`` (the labelled pairs, reused on a rerun), ``loss_log.jsonl``,
``checkpoint-<step>/`` and ``scorer/`` (a folder for ``PreferenceScorer.from_pretrained``), ``val.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pixpref.config import load_config, to_dict  # noqa: E402
from pixpref.errors import PixprefError  # noqa: E402
from pixpref.scorer.conditions import PERSONAL  # noqa: E402
from pixpref.scorer.model import ScorerConfig, ScorerModel, pairwise_loss  # noqa: E402
from pixpref.scorer.toylabels import ToyLabelConfig, ToyPairs  # noqa: E402


@dataclass
class TrainSection:
    """Optimisation settings (YAML section ``train``)."""

    steps: int = 600
    batch_size: int = 32  # text-dimension pairs per step
    personal_batch_size: int = 16  # personal pairs per step (when the data has them)
    lr: float = 1e-3  # head learning rate
    backbone_lr: float = 1e-4  # learning rate of the unfrozen backbone blocks
    weight_decay: float = 0.01
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1  # cosine decay down to lr * min_lr_ratio
    grad_clip: float = 1.0
    label_mode: Literal["sampled", "probability"] = "sampled"  # train on drawn labels or on P(a preferred)
    val_fraction: float = 0.1
    val_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only the final save
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    threads: int = 0  # torch threads (0: leave as is)
    save_fp16: bool = True
    include_backbone: bool = False  # False: store only head + trained parts, refer to the backbone file
    init_from: str | None = None  # continue from a saved scorer ("toy" or a folder) with the same model config

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "val_every", "log_every"):
            if getattr(self, name) < 1:
                raise PixprefError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.personal_batch_size < 0 or self.checkpoint_every < 0 or self.warmup_steps < 0:
            raise PixprefError("train.personal_batch_size, checkpoint_every and warmup_steps must be >= 0")
        if self.lr <= 0 or self.backbone_lr < 0:
            raise PixprefError("train.lr must be > 0 and train.backbone_lr >= 0")
        if not 0 <= self.val_fraction < 1:
            raise PixprefError(f"train.val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise PixprefError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class TrainScorerConfig:
    """The whole run: ``model`` (ScorerConfig), ``data`` (ToyLabelConfig), ``train`` (TrainSection)."""

    seed: int = 0
    out_dir: str = "runs/scorer_toy"
    model: ScorerConfig = field(default_factory=ScorerConfig)
    data: ToyLabelConfig = field(default_factory=ToyLabelConfig)
    train: TrainSection = field(default_factory=TrainSection)


# model-config keys a fine-tune (train.init_from) may change; any other difference is refused
CARRY_OVER_KEYS = {"user_dim", "freeze_backbone", "unfreeze_last_blocks"}


def init_model(cfg: TrainScorerConfig) -> ScorerModel:
    """The model of a saved scorer (``train.init_from``), refused when its config differs from ``model``, except
    in :data:`CARRY_OVER_KEYS`: a new ``user_dim`` (a new user encoder; every weight but the user projection's is
    carried over) and which backbone parts train (all weights carried over, trainability from ``model``)."""
    from pixpref.scorer.api import PreferenceScorer

    model = PreferenceScorer.from_pretrained(cfg.train.init_from).model
    saved, wanted = to_dict(model.config), to_dict(cfg.model)
    differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if not differ:
        return model
    if set(differ) <= CARRY_OVER_KEYS:
        fresh = ScorerModel.from_config(cfg.model)
        own = fresh.state_dict()
        keep = {k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape}
        fresh.load_state_dict(keep, strict=False)
        changes = ", ".join(f"{k} {saved.get(k)} -> {wanted.get(k)}" for k in differ)
        print(f"train.init_from {cfg.train.init_from}: {changes}; fresh: {sorted(set(own) - set(keep)) or 'none'}")
        return fresh
    raise PixprefError(
        f"train.init_from {cfg.train.init_from}: its model config differs in {', '.join(differ)} "
        f"(saved: { {k: saved.get(k) for k in differ} }); only {', '.join(sorted(CARRY_OVER_KEYS))} may change"
    )


class PairLoss(torch.nn.Module):
    """Bradley-Terry loss of a batch of pairs, averaged over the dimensions labelled in the batch."""

    def __init__(self, model: ScorerModel, dimensions: list[str]) -> None:
        super().__init__()
        self.model = model
        self.dimensions = dimensions

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, targets: dict[str, torch.Tensor],
                user: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """pixels (2B, 3, S, S): the B "a" images then the B "b" images; ids (2B, L); targets {dim: (B,)}
        P(a preferred) per pair, NaN where the pair has no label on that dimension; user (B, T, D)."""
        b = pixels.shape[0] // 2
        feats = self.model.encode(pixels, ids)
        losses = {}
        for dim in self.dimensions:
            rows = torch.isfinite(targets[dim]).nonzero().squeeze(1)  # (b_d,)
            if len(rows) == 0:
                continue
            both = torch.cat([rows, rows + b])  # (2 b_d,)
            sub = {k: v[both] for k, v in feats.items()}
            u = None if dim != PERSONAL else user[rows].repeat(2, 1, 1)  # (2 b_d, T, D)
            scores = self.model.score_dimension(sub, dim, u)  # (2 b_d,)
            losses[dim] = pairwise_loss(scores[: len(rows)], scores[len(rows):], targets[dim][rows])
        loss = torch.stack(list(losses.values())).mean()
        return loss, {d: v.item() for d, v in losses.items()}


class PairBatcher:
    """Random batches of pairs: ``batch_size`` pairs with text-dimension labels + ``personal`` user pairs."""

    def __init__(self, pairs: ToyPairs, model: ScorerModel, dimensions: list[str], batch_size: int,
                 personal: int, label_mode: str, seed: int) -> None:
        self.pairs, self.model, self.dimensions = pairs, model, dimensions
        source = pairs.labels if label_mode == "sampled" else {
            d: np.where(np.isfinite(pairs.labels[d]), pairs.probs[d], np.nan) for d in pairs.labels}
        self.targets = {d: torch.as_tensor(source[d], dtype=torch.float32) for d in dimensions}
        has_text = np.zeros(len(pairs), bool)
        for d in dimensions:
            if d != PERSONAL:
                has_text |= np.isfinite(pairs.labels[d])
        self.text_rows = np.flatnonzero(has_text)
        self.user_rows = np.flatnonzero(pairs.context >= 0) if PERSONAL in dimensions else np.zeros(0, int)
        self.sizes = (batch_size if len(self.text_rows) else 0, personal if len(self.user_rows) else 0)
        if sum(self.sizes) == 0:
            raise PixprefError(f"no training pairs carry labels for {', '.join(dimensions)}")
        self.ids = model.tokenize(pairs.prompts).cpu()  # (N, L)
        self.embeddings = torch.as_tensor(pairs.embeddings, dtype=torch.float32)
        self.rng = np.random.default_rng(seed)

    def next(self, device: torch.device) -> dict:
        rows = np.concatenate([self.rng.choice(self.text_rows, self.sizes[0]) if self.sizes[0] else [],
                               self.rng.choice(self.user_rows, self.sizes[1]) if self.sizes[1] else []]).astype(int)
        images = torch.from_numpy(self.pairs.images[rows])  # (B, 2, H, W, 3) uint8
        images = torch.cat([images[:, 0], images[:, 1]]).permute(0, 3, 1, 2).float() / 255  # (2B, 3, H, W)
        pixels = self.model.preprocess(images.to(device))
        ids = self.ids[rows].repeat(2, 1).to(device)  # (2B, L)
        targets = {d: self.targets[d][rows].to(device) for d in self.dimensions}
        user = None
        if PERSONAL in self.dimensions and self.embeddings.numel():
            ctx = torch.as_tensor(self.pairs.context[rows]).clamp_min(0)
            user = self.embeddings[ctx].to(device)  # (B, T, D); rows without a user are not used
        return {"pixels": pixels, "ids": ids, "targets": targets, "user": user}


def lr_factor(step: int, cfg: TrainSection) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def main(argv: list[str] | None = None) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from pixpref.scorer.api import PreferenceScorer
    from pixpref.scorer.benchmarks import evaluate_pairs
    from pixpref.scorer.toylabels import make_pairs

    # ---- config -----------------------------------------------------------------------------------
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/scorer/train_toy.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--out-dir", help="override out_dir")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, TrainScorerConfig, overrides=args.set)
    if args.out_dir:
        cfg.out_dir = args.out_dir
    out = Path(cfg.out_dir)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision)
    set_seed(cfg.seed)
    log = accelerator.print
    t0 = time.time()

    # ---- data -------------------------------------------------------------------------------------
    cache = out / "pairs.npz"
    pairs = ToyPairs.load(cache) if cache.is_file() else None
    data_key = json.dumps(to_dict(cfg.data))
    if cfg.data.users and cfg.data.user_encoder != "oracle":  # a retrained VLM makes the embeddings stale
        from pixpref.personalize.user_cache import vlm_fingerprint

        data_key += " vlm_weights=" + vlm_fingerprint(cfg.data.user_encoder)
        if cfg.data.user_pooling == "preference_head":
            from pixpref.personalize.preference_head import head_fingerprint

            data_key += " head=" + head_fingerprint(cfg.data.user_head)
    if pairs is not None and pairs.meta.get("data_config") == data_key:
        log(f"reusing {len(pairs)} labelled pairs from {cache}")
    else:
        with accelerator.main_process_first():
            pairs = make_pairs(cfg.data, progress=accelerator.is_local_main_process)
        pairs.meta["data_config"] = data_key
        if accelerator.is_main_process:
            pairs.save(cache)
    dims = [d for d in cfg.model.dimensions if d in pairs.dimensions]
    missing = [d for d in cfg.model.dimensions if d not in pairs.dimensions]
    if missing:
        log(f"warning: no labels for dimension(s) {', '.join(missing)} in the data; they stay untrained")
    if PERSONAL in dims and pairs.embeddings.shape[-1] != cfg.model.user_dim:
        raise PixprefError(
            f"model.user_dim is {cfg.model.user_dim} but the user encoder gives width "
            f"{pairs.embeddings.shape[-1]} ({pairs.embeddings.shape[1]} tokens); set model.user_dim to match"
        )
    rng = np.random.default_rng(cfg.seed)
    is_val = rng.random(len(pairs)) < cfg.train.val_fraction
    train_set, val_set = pairs.subset(np.flatnonzero(~is_val)), pairs.subset(np.flatnonzero(is_val))
    log(f"pairs: {len(train_set)} train, {len(val_set)} val; dimensions: {', '.join(dims)}; "
        f"labels per dimension: " + ", ".join(f"{d} {int(np.isfinite(train_set.labels[d]).sum())}" for d in dims))
    log(f"data ready in {time.time() - t0:.0f} s")

    # ---- model ------------------------------------------------------------------------------------
    model = ScorerModel.from_config(cfg.model) if not cfg.train.init_from else init_model(cfg)
    head = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("clip.")]
    backbone = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("clip.")]
    n_train = sum(p.numel() for p in head + backbone)
    n_all = sum(p.numel() for p in model.parameters())
    log(f"parameters: {n_train / 1e6:.2f}M trainable of {n_all / 1e6:.2f}M "
        f"(head {sum(p.numel() for p in head) / 1e6:.2f}M, backbone {sum(p.numel() for p in backbone) / 1e6:.2f}M)")

    # ---- optimizer --------------------------------------------------------------------------------
    groups = [{"params": head, "lr": cfg.train.lr}]
    if backbone and cfg.train.backbone_lr > 0:
        groups.append({"params": backbone, "lr": cfg.train.backbone_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.train.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    loss_fn = PairLoss(model, dims)
    loss_fn, optimizer = accelerator.prepare(loss_fn, optimizer)
    batcher = PairBatcher(train_set, model, dims, cfg.train.batch_size, cfg.train.personal_batch_size,
                          cfg.train.label_mode, cfg.seed)

    # ---- loop -------------------------------------------------------------------------------------
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(to_dict(cfg), indent=1))
        log_file = open(out / "loss_log.jsonl", "w")  # noqa: SIM115 - closed at the end
    val_history = []
    bar = tqdm(range(cfg.train.steps), desc="train scorer", disable=not accelerator.is_local_main_process)
    for step in bar:
        for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = lr * lr_factor(step, cfg.train)
        batch = batcher.next(accelerator.device)
        loss, per_dim = loss_fn(**batch)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if cfg.train.grad_clip > 0:
            accelerator.clip_grad_norm_(head + backbone, cfg.train.grad_clip)
        optimizer.step()
        if accelerator.is_main_process and (step % cfg.train.log_every == 0 or step == cfg.train.steps - 1):
            row = {"step": step, "loss": round(loss.item(), 5), "lr": optimizer.param_groups[0]["lr"],
                   "time_s": round(time.time() - t0, 1), **{f"loss_{d}": round(v, 5) for d, v in per_dim.items()}}
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        last = step == cfg.train.steps - 1
        if len(val_set) and ((step + 1) % cfg.train.val_every == 0 or last):
            acc = evaluate_pairs(model, val_set, dims)
            val_history.append({"step": step + 1, **acc})
            log(f"step {step + 1}: val " + ", ".join(
                f"{d} {acc[d]['accuracy']:.3f} (ceiling {acc[d]['bayes_ceiling']:.3f})" for d in dims))
            model.train()
        if accelerator.is_main_process and cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0:
            PreferenceScorer(model).save_pretrained(out / f"checkpoint-{step + 1}", fp16=cfg.train.save_fp16,
                                                    overwrite=True, include_backbone=cfg.train.include_backbone)
            model.train()

    # ---- save -------------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    result = {"steps": cfg.train.steps, "time_s": round(time.time() - t0, 1), "val": val_history}
    if accelerator.is_main_process:
        log_file.close()
        saved = PreferenceScorer(accelerator.unwrap_model(loss_fn).model).save_pretrained(
            out / "scorer", fp16=cfg.train.save_fp16, overwrite=True, include_backbone=cfg.train.include_backbone)
        if cfg.data.users and cfg.data.user_encoder != "oracle":  # how to embed users for 'personal'
            from types import SimpleNamespace

            from pixpref.personalize.embeddings import write_user_encoder_spec

            write_user_encoder_spec(saved, SimpleNamespace(source="vlm", vlm=cfg.data.user_encoder, head=cfg.data.user_head,
                                                           pooling=cfg.data.user_pooling, generate_tokens=0))
        (out / "val.json").write_text(json.dumps(result, indent=1))
        size = sum(f.stat().st_size for f in saved.iterdir()) / 1e6
        log(f"saved {saved} ({size:.2f} MB) after {result['time_s']:.0f} s")
    accelerator.end_training()
    return result


if __name__ == "__main__":
    try:
        main()
    except PixprefError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
