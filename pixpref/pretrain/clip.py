"""Pretrain the toy CLIP (open_clip, config ``pixpref-toy-clip``) contrastively on toy images.

    HF_HUB_OFFLINE=1 pixpref pretrain toy --only clip --out runs/pretrain  [--set clip.steps=100]

Each image is paired with either its full caption (content and style, :func:`~pixpref.toyworld.scene.caption`)
or a content-only prompt from ``PROMPT_TEMPLATES``. Because a batch often holds several images with the
same content, the InfoNCE targets are multi-positive: a content prompt matches every image of its colour
and shape, a full caption every image with the same caption. Half of the batches hold only three colours,
so that shapes (hard at 32 px) must be told apart, and an auxiliary linear probe reads the caption
attributes from the image embedding (dropped after training). Without these, the first run (800 steps)
recognised colours perfectly but shapes only ~60% of the time. Held-out shape-colour combinations are
never shown. Writes ``out_dir/clip`` (``open_clip_config.json``, fp16 ``model.safetensors``, ``train_log.csv``,
``metrics.json``).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixpref.errors import PixprefError
from pixpref.pretrain.schedule import warmup_cosine
from pixpref.toyworld.scene import PROMPT_TEMPLATES, Scene, caption, sample_scene


@dataclass
class PretrainConfig:
    """Toy CLIP pretraining settings (configs/toy/pretrain_clip.yaml)."""

    seed: int = 0
    model_name: str = "pixpref-toy-clip"  # an open_clip config (pixpref/models/configs/*.json)
    steps: int = 1500
    batch_size: int = 64
    lr: float = 5e-4
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    train_scenes: int = 20000  # pre-rendered pool (seen combos only)
    full_caption_prob: float = 0.5  # else a content-only prompt
    focus_prob: float = 0.5  # share of batches drawn from only `focus_colours` colours (hard shape negatives)
    focus_colours: int = 3
    probe_weight: float = 1.0  # auxiliary linear attribute probe on the image embedding (not saved)
    eval_images: int = 500
    eval_seed: int = 12345
    log_every: int = 10
    threads: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise PixprefError("steps must be >= 1 and batch_size >= 2")
        if not 0.0 <= self.full_caption_prob <= 1.0:
            raise PixprefError(f"full_caption_prob must be in [0, 1], got {self.full_caption_prob}")


def pixel_tensor(images: np.ndarray, model: Any):
    """uint8 ``(N, H, W, 3)`` at the model's size -> normalised ``(N, 3, H, W)``, as open_clip's
    preprocess would produce (checked in tests)."""
    import torch
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", OPENAI_DATASET_STD)).view(1, 3, 1, 1)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
    return (x - mean) / std


def content_key(scene: Scene) -> str:
    return f"{scene.colour} {scene.shape}"


def multi_positive_loss(logits, match):
    """Symmetric InfoNCE with several positives: ``logits`` ``(B, B)`` image x text, ``match`` bool
    ``(B, B)`` (diagonal always true). Targets spread uniformly over the positives."""
    import torch.nn.functional as F

    m = match.float()
    t_img = m / m.sum(dim=1, keepdim=True)  # image -> texts
    t_txt = (m / m.sum(dim=0, keepdim=True)).T  # text -> images
    loss_i = -(t_img * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(t_txt * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i + loss_t)


# ---- evaluation ----------------------------------------------------------------------------------------


def retrieval_eval(model: Any, tokenizer: Any, scenes: list[Scene], size: int = 32) -> dict[str, float]:
    """Text-to-image top-1 retrieval among the ``N`` rendered ``scenes``.

    content_top1: query each image's content prompt (averaged over all PROMPT_TEMPLATES); correct if the
    top-ranked image has the query's colour and shape. content_top1_heldout: the same over queries whose
    combination is held out from training. style_top1: query each image's full caption; correct if the
    top image has exactly that caption (all binned style words equal). style_top5_exact: the image itself
    is among the top 5.
    """
    import torch

    from pixpref.toyworld.render import render_batch
    from pixpref.toyworld.scene import HELD_OUT_COMBOS

    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        img = model.encode_image(pixel_tensor(render_batch(scenes, size), model).to(device), normalize=True)
        keys = np.array([content_key(s) for s in scenes])
        held = np.array([(s.colour, s.shape) in HELD_OUT_COMBOS for s in scenes])
        hits = []
        for t in range(len(PROMPT_TEMPLATES)):
            txt = model.encode_text(tokenizer([s.prompt(t) for s in scenes]).to(device), normalize=True)
            top = (txt @ img.T).argmax(dim=1).cpu().numpy()  # (N,) best image per query
            hits.append(keys[top] == keys)
        hits_arr = np.mean(hits, axis=0)
        caps = np.array([caption(s) for s in scenes])
        txt = model.encode_text(tokenizer(list(caps)).to(device), normalize=True)
        sim = txt @ img.T  # (N, N)
        top = sim.argmax(dim=1).cpu().numpy()
        top5 = sim.topk(min(5, len(scenes)), dim=1).indices.cpu().numpy()
    idx = np.arange(len(scenes))
    return {
        "n": len(scenes),
        "content_top1": float(hits_arr.mean()),
        "content_top1_heldout": float(hits_arr[held].mean()) if held.any() else float("nan"),
        "content_top1_seen": float(hits_arr[~held].mean()) if (~held).any() else float("nan"),
        "style_top1": float((caps[top] == caps).mean()),
        "style_top5_exact": float((top5 == idx[:, None]).any(axis=1).mean()),
    }


def held_out_scenes(n: int, seed: int) -> list[Scene]:
    """Fresh scenes from a separate seed; every 4th uses a held-out shape-colour combination."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, combos="held_out" if i % 4 == 3 else "seen") for i in range(n)]


# ---- training ------------------------------------------------------------------------------------------


def _tokenize_unique(tokenizer: Any, texts: list[str]):
    """Tokenise each distinct text once -> ``(len(texts), T)``."""
    unique = sorted(set(texts))
    tokens = tokenizer(unique)
    where = {t: i for i, t in enumerate(unique)}
    return tokens[[where[t] for t in texts]]


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    return warmup_cosine(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)


def run(out_dir: Path, cfg: PretrainConfig) -> dict:
    """Train the toy CLIP; save it to ``out_dir/clip``; return final metrics."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from pixpref.models.clip import create_clip, save_clip
    from pixpref.pretrain.vlm import make_probe, probe_loss, probe_targets
    from pixpref.toyworld.render import render_batch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir) / "clip"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)

    # 1. model
    model, _, tokenizer = create_clip(cfg.model_name)
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    n_params = sum(p.numel() for p in model.parameters())

    # 2. data: rendered pool + tokenised captions and prompts
    scenes = [sample_scene(rng, combos="seen") for _ in range(cfg.train_scenes)]
    pixels = pixel_tensor(render_batch(scenes, size), model)  # (N, 3, H, W)
    caps = np.array([caption(s) for s in scenes])
    full_tokens = _tokenize_unique(tokenizer, list(caps))  # (N, T)
    prompt_tokens = torch.stack(  # (templates, N, T)
        [_tokenize_unique(tokenizer, [s.prompt(t) for s in scenes]) for t in range(len(PROMPT_TEMPLATES))]
    )
    keys = np.array([content_key(s) for s in scenes])

    by_colour = {c: np.flatnonzero([s.colour == c for s in scenes]) for c in sorted({s.colour for s in scenes})}
    probe_cls, probe_reg = (torch.from_numpy(a) for a in probe_targets(scenes))
    embed_dim = model.text_projection.shape[1] if model.text_projection is not None else model.transformer.width
    probe = make_probe(1, embed_dim)

    # 3. optimiser
    params = list(model.named_parameters()) + list(probe.named_parameters(prefix="probe"))
    decay = [p for n, p in params if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in params if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
    )

    # 4. loop
    model.train()
    t0 = time.time()
    ema = None
    with open(out / "train_log.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "probe_loss", "logit_scale", "lr", "seconds"])
        bar = tqdm(range(cfg.steps), desc="pretrain clip")
        for step in bar:
            pool = np.arange(len(scenes))
            if rng.random() < cfg.focus_prob:  # few colours: the batch must be told apart by shape and style
                colours = rng.choice(sorted(by_colour), size=min(cfg.focus_colours, len(by_colour)), replace=False)
                pool = np.concatenate([by_colour[c] for c in colours])
            idx = rng.choice(pool, size=min(cfg.batch_size, len(pool)), replace=False)
            full = rng.random(len(idx)) < cfg.full_caption_prob
            tmpl = rng.integers(len(PROMPT_TEMPLATES), size=len(idx))
            text = torch.where(torch.from_numpy(full)[:, None], full_tokens[idx], prompt_tokens[tmpl, idx])
            # match[i, j]: image i fits text j (content prompt: same content; full caption: same caption)
            same_cap = caps[idx][:, None] == caps[idx][None, :]
            same_key = keys[idx][:, None] == keys[idx][None, :]
            match = torch.from_numpy(np.where(full[None, :], same_cap, same_key))
            lr = _lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            img_raw = model.encode_image(pixels[idx])  # (B, D)
            img = F.normalize(img_raw, dim=-1)
            txt = model.encode_text(text, normalize=True)  # (B, D)
            logits = model.logit_scale.exp() * img @ txt.T  # (B, B)
            clip_loss = multi_positive_loss(logits, match)
            p_loss = torch.zeros(())
            if cfg.probe_weight > 0:
                p_loss = probe_loss(probe, img_raw[:, None], probe_cls[idx], probe_reg[idx])
            loss = clip_loss + cfg.probe_weight * p_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            value = clip_loss.item()
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                writer.writerow([step, f"{value:.5f}", f"{p_loss.item():.4f}",
                                 f"{model.logit_scale.exp().item():.2f}", f"{lr:.3e}", f"{time.time() - t0:.1f}"])
                f.flush()
                bar.set_postfix(loss=f"{ema:.3f}")
    train_seconds = time.time() - t0

    # 5. save (fp16) and evaluate with the saved precision
    save_clip(model, cfg.model_name, out, fp16=True)
    model = model.half().float().eval()
    metrics: dict[str, Any] = {
        "params": n_params,
        "steps": cfg.steps,
        "train_seconds": round(train_seconds, 1),
        "steps_per_second": round(cfg.steps / train_seconds, 3),
        "final_loss_ema": round(float(ema), 4),
    }
    if cfg.eval_images > 0:
        res = retrieval_eval(model, tokenizer, held_out_scenes(cfg.eval_images, cfg.eval_seed), size)
        metrics.update({f"heldout_{k}": (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
