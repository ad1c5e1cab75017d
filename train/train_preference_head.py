"""Train the preference head (pixpref/personalize/preference_head.py) on many users' pairwise choices.

The shipped toy head (pixpref/pretrained/toy/preference_head) is made by exactly this command (~5 min, 2 cores;
the VLM reads each pair twice, then the head trains in ~2 min):

    python train/train_preference_head.py --config configs/toy/preference_head.yaml
    python train/train_preference_head.py --config configs/toy/preference_head.yaml --ship   # also copy to the package

Reads top to bottom: config -> pairs (ties dropped) -> per-pair VLM readings (as shown and swapped; cached
beside the data, reused when the VLM weights and the pairs are unchanged) -> users split into train / val ->
episodes (a user's k random pairs predict their other pairs' choices) -> AdamW -> the head with the best val
accuracy at k = 4 -> save; then the held-out choice accuracy at k = 1, 2, 4, 8 on ``eval_data`` (users never
seen in training; reported, never used to choose).

Outputs in ``output_dir``: ``preference_head/`` (for ``PreferenceHead.from_pretrained`` and
``user.head``), ``loss_log.jsonl``, ``metrics.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pixpref.config import load_config, to_dict  # noqa: E402
from pixpref.data.pairs import DataConfig  # noqa: E402
from pixpref.errors import PixprefError  # noqa: E402
from pixpref.personalize.preference_head import (  # noqa: E402
    SHIPPED_HEADS,
    PreferenceHead,
    PreferenceHeadConfig,
    group_rows,
    heldout_choice_accuracy,
    sample_episodes,
)


@dataclass
class HeadSection:
    evidence_dim: int = 32
    num_prototypes: int = 64
    hidden_dim: int = 0
    input_dropout: float = 0.0


@dataclass
class TrainSection:
    steps: int = 3000
    batch_users: int = 64  # episodes per step
    max_context: int = 8  # k ~ U{1..max_context}
    queries: int = 8  # held-out pairs per episode
    lr: float = 1e-3
    weight_decay: float = 0.1
    val_fraction: float = 0.1  # of the training users, for choosing the step
    val_every: int = 250
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_users", "max_context", "queries", "val_every"):
            if getattr(self, name) < 1:
                raise PixprefError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise PixprefError(f"train.val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class HeadTrainConfig:
    vlm: str = "toy"
    data: DataConfig = field(default_factory=DataConfig)
    eval_data: str = ""  # pairs of users never trained on (same format); "" skips the report
    readings_cache: str = ""  # default: <output_dir>/readings.safetensors
    eval_readings_cache: str = ""  # default: <output_dir>/eval_readings.safetensors
    encode_batch_size: int = 32
    head: HeadSection = field(default_factory=HeadSection)
    train: TrainSection = field(default_factory=TrainSection)
    output_dir: str = "runs/preference_head"


def read_all_pairs(cfg: HeadTrainConfig, data: DataConfig, cache: Path):
    """(N, 2, L+1, D) readings and the per-pair user ids of ``data``, from the cache when it matches."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from pixpref.io_utils import atomic_path
    from pixpref.personalize.dataset import load_pairs
    from pixpref.personalize.user_cache import vlm_fingerprint
    from pixpref.personalize.user_encoder import UserEncoder, UserEncoderConfig

    arrays, _ = load_pairs(data)
    digest = hashlib.sha256(json.dumps([[int(i), p, u] for i, p, u in
                                        zip(arrays.index, arrays.prompts, arrays.users)]).encode()).hexdigest()
    meta = {"vlm": str(cfg.vlm), "vlm_weights": vlm_fingerprint(cfg.vlm), "pairs": digest}
    if cache.is_file():
        with safe_open(str(cache), "pt") as f:
            if f.metadata() == meta | {"users": f.metadata().get("users", "")}:
                print(f"readings: reusing {cache}")
                return load_file(str(cache))["readings"].float(), f.metadata()["users"].split("\n")
    encoder = UserEncoder.from_pretrained(cfg.vlm, UserEncoderConfig(vlm=cfg.vlm, batch_size=cfg.encode_batch_size))
    chunks = []
    rows = list(range(len(arrays)))
    for s in tqdm(range(0, len(rows), 256), desc=f"VLM reads {len(rows)} pairs"):
        chunks.append(encoder.read_pairs(arrays.pairs(rows[s:s + 256])))
    readings = torch.cat(chunks)
    with atomic_path(cache) as tmp:
        save_file({"readings": readings.half()}, str(tmp), metadata=meta | {"users": "\n".join(arrays.users)})
    return readings, list(arrays.users)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ship", action="store_true", help="copy the trained head to pixpref/pretrained/toy")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, HeadTrainConfig, args.set)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed)

    # data: per-pair readings of the training users' pairs
    readings, users = read_all_pairs(cfg, cfg.data, Path(cfg.readings_cache or out / "readings.safetensors"))
    by_user = group_rows(users)
    ids = sorted(by_user)
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(cfg.train.seed)).tolist()
    n_val = max(1, round(cfg.train.val_fraction * len(ids)))
    val = {ids[i]: by_user[ids[i]] for i in perm[:n_val]}
    train = {ids[i]: by_user[ids[i]] for i in perm[n_val:]}
    print(f"pairs {len(users)}, users {len(ids)} (train {len(train)}, val {len(val)})")

    # model
    head = PreferenceHead(PreferenceHeadConfig(reading_dim=readings[0, 0].numel(), vlm=cfg.vlm, **to_dict(cfg.head)))
    train_rows = torch.cat(list(train.values()))
    head.set_normalization(readings[train_rows].reshape(-1, readings[0, 0].numel()))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.train.steps, eta_min=cfg.train.lr * 0.1)

    # loop: predict each episode's held-out choices from its context
    gen = torch.Generator().manual_seed(cfg.train.seed)
    best, best_step, log = -1.0, 0, []
    bar = tqdm(range(1, cfg.train.steps + 1), desc="preference head")
    t0 = time.time()
    for step in bar:
        ctx, mask, qry = sample_episodes(train, cfg.train.batch_users, cfg.train.max_context, cfg.train.queries, gen)
        ev_ctx = head.evidence(readings[ctx, 0], readings[ctx, 1])
        ev_qry = head.evidence(readings[qry, 0], readings[qry, 1])
        loss = torch.nn.functional.softplus(-head.choice_logits(head(ev_ctx, mask), ev_qry)).mean()
        if not torch.isfinite(loss):
            raise PixprefError(f"non-finite loss at step {step}; lower train.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.train.val_every == 0 or step == cfg.train.steps:
            acc = heldout_choice_accuracy(head, readings, val, k=4)
            log.append({"step": step, "loss": loss.item(), "val_acc_k4": acc, "seconds": time.time() - t0})
            bar.set_postfix(loss=f"{loss.item():.3f}", val_k4=f"{acc:.3f}")
            if acc > best:
                best, best_step = acc, step
                head.save_pretrained(out / "preference_head")
    with open(out / "loss_log.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in log)

    # report: users never trained on
    head = PreferenceHead.from_pretrained(out / "preference_head")
    metrics = {"best_step": best_step, "val_acc_k4": best, "train_seconds": time.time() - t0}
    if cfg.eval_data:
        ev_cfg = DataConfig(**(to_dict(cfg.data) | {"path": cfg.eval_data}))
        ev_read, ev_users = read_all_pairs(cfg, ev_cfg, Path(cfg.eval_readings_cache or out / "eval_readings.safetensors"))
        ev_by = group_rows(ev_users)
        metrics["heldout_users"] = len(ev_by)
        metrics["heldout_choice_acc"] = {k: heldout_choice_accuracy(head, ev_read, ev_by, k) for k in (1, 2, 4, 8)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps(metrics))
    if args.ship:
        dest = SHIPPED_HEADS["toy"]
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(out / "preference_head", dest)
        print(f"shipped to {dest}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PixprefError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
