"""Pretrain the toy world's base text-to-image model from scratch.

Launch (the shipped checkpoint ``pixpref/pretrained/toy/base`` is ``DIR/base`` of exactly this command)::

    HF_HUB_OFFLINE=1 nice pixpref pretrain toy --out DIR --only base

Model: a pixel-space ``UNet2DConditionModel`` (32x32, 3 channels, no VAE) cross-attending to a small
``CLIPTextModel`` over an offline word-level tokenizer; both trained jointly. Data: toy-world renders of
the *seen* shape-colour combinations with uniformly random style, captioned by a random prompt template
(content only); 10% of prompts are dropped to "" so classifier-free guidance works. Objective: epsilon
or v prediction (``prediction_type``) under a DDPM noise schedule. AdamW, linear warm-up then cosine decay, gradient clipping, EMA of
the weights. The EMA weights are saved as an fp16 ``PixprefPipeline`` folder with a DDIM scheduler,
together with ``loss_log.jsonl``, ``pretrain_config.yaml`` and ``samples.png``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from pixpref.errors import PixprefError

LOSS_LOG = "loss_log.jsonl"


@dataclass
class ModelArch:
    """Architecture of the toy base model."""

    image_size: int = 32  # pixels per side (pixel space: the UNet's sample_size)
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    # per resolution level: whether the block has (self + cross) attention. Attention at 16x16 tripled the
    # step time on this CPU, so by default only the 8x8 level (and the mid block) attend to the text.
    cross_attention: list[bool] = field(default_factory=lambda: [False, False, True])
    layers_per_block: int = 1
    attention_head_dim: int = 8  # diffusers' name; the UNet uses it as the number of heads
    norm_num_groups: int = 8
    text_hidden_size: int = 64  # CLIP text width = UNet cross_attention_dim
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 16  # tokens per prompt incl. <bos>/<eos>
    # also add an attention-pooled text embedding to the time embedding (diffusers addition_embed_type="text"),
    # so every ResNet block sees the prompt; cross-attention alone learned the prompt too slowly here
    pooled_text_embedding: bool = True
    # start the text -> UNet injection points (attn2 output projections, pooled-text LayerNorm gain) at zero.
    # Tried against the UNet learning to ignore the prompt; after 200 steps the text path was still ~0.
    zero_init_text_injection: bool = False
    # std of the text encoder's token-embedding init (CLIP's 0.02 made every prompt's hidden states nearly
    # identical, cosine > 0.99, so the UNet had nothing to read at first)
    text_init_std: float = 0.02
    # "scale_shift": the time (+ pooled prompt) embedding scales and shifts every ResNet block's features
    # (adaptive group norm) instead of only being added to them
    resnet_time_scale_shift: Literal["default", "scale_shift"] = "default"

    def __post_init__(self):
        if not self.block_out_channels or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise PixprefError(
                f"model.block_out_channels {self.block_out_channels} must be non-empty and divisible by "
                f"model.norm_num_groups={self.norm_num_groups}"
            )
        if len(self.cross_attention) != len(self.block_out_channels):
            raise PixprefError("model.cross_attention needs one true/false per entry of model.block_out_channels")
        if self.image_size % 2 ** (len(self.block_out_channels) - 1):
            raise PixprefError(f"model.image_size {self.image_size} must be divisible by the UNet's downsampling")
        if self.text_hidden_size % self.text_heads:
            raise PixprefError("model.text_hidden_size must be divisible by model.text_heads")


@dataclass
class PretrainConfig:
    """Training settings of the base model (``configs/toy/pretrain_base.yaml``)."""

    seed: int = 0
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3  # peak learning rate after warm-up
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # upper bound; EMA warm-up ramps the decay up from 0
    prompt_dropout: float = 0.1  # fraction of prompts replaced by "" (for classifier-free guidance)
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    # v-prediction: at high noise an epsilon target barely depends on the clean image, so the prompt (which
    # decides content at exactly those steps) gave almost no gradient; v weights the content error ~1 there
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    # fraction of each batch whose timestep is drawn from [high_noise_min_t, T) instead of [0, T): the prompt
    # only matters where the noisy image no longer shows the object, so uniform t gave it ~5% of the signal
    high_noise_fraction: float = 0.0
    high_noise_min_t: int = 600
    # loss weight of the object's pixels (background 1; the renderer knows the object mask). The object is
    # ~10% of the pixels while the random background dominates the error, so with weight 1 the prompt's
    # signal was lost in the noise: after 200 steps at t > 930 the UNet still ignored the prompt; with 10 it
    # used it within 100 steps (object-pixel error 0.30 with the right prompt vs 0.45 with a shuffled one)
    object_loss_weight: float = 1.0
    log_every: int = 10  # steps between loss-log lines
    save_every: int = 500  # steps between (overwritten) EMA snapshots of the folder; 0 = only at the end
    sample_prompts: list[str] = field(default_factory=lambda: ["a red circle", "a blue star", "a green square",
                                                              "a yellow triangle", "a purple cross"])
    sample_guidance_scale: float = 2.0
    sample_steps: int = 25  # DDIM steps for samples.png
    save_dtype: Literal["float16", "float32"] = "float16"
    threads: int = 1  # torch CPU threads; 0 = torch's default. One thread is fastest on a busy 2-core machine
    # continue from a saved toy base pipeline folder (its weights; ``model`` must describe the same architecture)
    init_from: str | None = None
    model: ModelArch = field(default_factory=ModelArch)

    def __post_init__(self):
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "warmup_steps": 0 <= self.warmup_steps < self.steps,
            "grad_clip": self.grad_clip > 0,
            "ema_decay": 0 < self.ema_decay < 1,
            "prompt_dropout": 0 <= self.prompt_dropout < 1,
            "log_every": self.log_every >= 1,
            "save_every": self.save_every >= 0,
            "threads": self.threads >= 0,
            "sample_steps": self.sample_steps >= 1,
            "high_noise_fraction": 0.0 <= self.high_noise_fraction <= 1.0,
            "object_loss_weight": self.object_loss_weight >= 1.0,
            "high_noise_min_t": 0 <= self.high_noise_min_t < self.num_train_timesteps,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise PixprefError(f"invalid pretrain_base setting(s): {', '.join(bad)} (see configs/toy/pretrain_base.yaml)")


def build_unet(arch: ModelArch, seed: int = 0):
    """Randomly initialised pixel-space ``UNet2DConditionModel`` (attention where ``arch.cross_attention``)."""
    import torch
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in arch.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(arch.cross_attention))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=arch.image_size,
            in_channels=3,
            out_channels=3,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=tuple(arch.block_out_channels),
            layers_per_block=arch.layers_per_block,
            attention_head_dim=arch.attention_head_dim,
            norm_num_groups=arch.norm_num_groups,
            cross_attention_dim=arch.text_hidden_size,
            addition_embed_type="text" if arch.pooled_text_embedding else None,
            addition_embed_type_num_heads=arch.text_heads,
            resnet_time_scale_shift=arch.resnet_time_scale_shift,
        )
    if arch.zero_init_text_injection:
        with torch.no_grad():
            for name, module in unet.named_modules():
                if name.endswith("attn2"):
                    module.to_out[0].weight.zero_()
                    module.to_out[0].bias.zero_()
            if arch.pooled_text_embedding:
                unet.add_embedding.norm2.weight.zero_()
    return unet


def build_schedulers(cfg: PretrainConfig):
    """(DDPM training scheduler, DDIM sampling scheduler) over the same noise schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=True,  # pixel space is [-1, 1]
        clip_sample_range=1.0,
        timestep_spacing="trailing",
    )
    return DDPMScheduler(**common), DDIMScheduler(**common, set_alpha_to_one=True)


def build_pipeline(cfg: PretrainConfig):
    """A fresh (untrained) toy ``PixprefPipeline`` with the DDIM sampling scheduler."""
    from pixpref.models.pipeline import PixprefPipeline
    from pixpref.models.text import build_text_encoder, build_tokenizer

    arch = cfg.model
    tokenizer = build_tokenizer(arch.max_length)
    text_encoder = build_text_encoder(len(tokenizer), arch.text_hidden_size, arch.text_layers, arch.text_heads,
                                      arch.max_length, seed=cfg.seed)
    if arch.text_init_std != 0.02:  # CLIP's own init is std 0.02
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 2)
            torch.nn.init.normal_(text_encoder.get_input_embeddings().weight, std=arch.text_init_std)
    unet = build_unet(arch, seed=cfg.seed)
    _, ddim = build_schedulers(cfg)
    return PixprefPipeline(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=ddim)


class SceneStream:
    """Reproducible infinite stream of (images, prompts) batches from the toy renderer (seen combos)."""

    def __init__(self, seed: int, image_size: int, prompt_dropout: float):
        self.rng = np.random.default_rng(seed)
        self.image_size = image_size
        self.prompt_dropout = prompt_dropout

    def batch(self, n: int, with_masks: bool = False):
        """-> images ``(n, 3, H, W)`` float32 in [-1, 1], list of n prompts ("" when dropped)
        [, object masks ``(n, 1, H, W)`` float32 in {0, 1}, grown by one pixel, when ``with_masks``]."""
        import torch

        from pixpref.toyworld.render import render_batch, shape_mask
        from pixpref.toyworld.scene import PROMPT_TEMPLATES, sample_scene

        scenes = [sample_scene(self.rng, combos="seen") for _ in range(n)]
        pixels = render_batch(scenes, self.image_size)  # (n, H, W, 3) uint8
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        templates = self.rng.integers(len(PROMPT_TEMPLATES), size=n)
        dropped = self.rng.random(n) < self.prompt_dropout
        prompts = ["" if d else s.prompt(int(k)) for s, k, d in zip(scenes, templates, dropped)]
        if not with_masks:
            return images, prompts
        side = self.image_size
        masks = np.stack([shape_mask(s.shape, s.cx * side, s.cy * side, s.size * side + 1.0, side) for s in scenes])
        return images, prompts, torch.from_numpy(masks[:, None].astype(np.float32))


@contextlib.contextmanager
def _quiet_diffusers():
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        yield
    finally:
        dlogging.set_verbosity(level)


def save_pipeline(pipe, params_ema, out_dir: Path, dtype_name: str) -> None:
    """Save a copy of ``pipe`` holding the EMA weights, cast to ``dtype_name``, as safetensors."""
    import torch

    snapshot = copy.deepcopy(pipe)
    params = list(snapshot.unet.parameters()) + list(snapshot.text_encoder.parameters())
    params_ema.copy_to(params)
    with _quiet_diffusers():  # the fp16 cast warns about modules to keep in fp32; this UNet has none
        snapshot.to(dtype=getattr(torch, dtype_name))
    # write into a temporary folder, then move each component into place: a kill mid-save never leaves a
    # half-written weights file in out_dir (at worst components of two consecutive snapshots)
    import shutil
    import tempfile

    out_dir = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp_save_", dir=out_dir))
    try:
        snapshot.save_pretrained(tmp, safe_serialization=True)
        for item in sorted(tmp.iterdir(), key=lambda p: p.name == "model_index.json"):  # the index last
            target = out_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_weights(pipe, folder: str) -> None:
    """Copy the UNet and text-encoder weights of the pipeline folder ``folder`` into ``pipe`` (fp32)."""
    from pixpref.models.diffusion import load_pipeline

    saved = load_pipeline(folder)
    for name in ("unet", "text_encoder"):
        mine, theirs = getattr(pipe, name), getattr(saved, name)
        try:
            mine.load_state_dict({k: v.float() for k, v in theirs.state_dict().items()}, strict=True)
        except RuntimeError as e:
            raise PixprefError(f"init_from {folder}: its {name} does not match this config's model "
                               f"architecture ({str(e).splitlines()[0]})") from None


def sample_grid(pipe, prompts: list[str], n_per_prompt: int, guidance_scale: float, seed: int, steps: int = 25):
    """Sample ``n_per_prompt`` images per prompt -> PIL grid (one row per prompt)."""
    import torch

    from pixpref.toyworld.render import make_grid

    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    imgs = pipe(prompts, num_images_per_prompt=n_per_prompt, num_inference_steps=steps,
                guidance_scale=guidance_scale, generator=g, output_type="np").images  # (P * n, H, W, 3) in [0, 1]
    return make_grid((imgs * 255 + 0.5).astype(np.uint8), ncols=n_per_prompt, upscale=2)


def run(out_dir: Path, cfg: PretrainConfig) -> dict:
    """Train the base model; save it to ``out_dir/base`` (a diffusers pipeline folder); return final metrics."""
    import torch
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from pixpref.config import save_config
    from pixpref.models.pipeline import tokenize

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir) / "base"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "pretrain_config.yaml")
    torch.manual_seed(cfg.seed)
    noise_gen = torch.Generator().manual_seed(cfg.seed + 1)

    # models: both trained, fp32
    pipe = build_pipeline(cfg)
    if cfg.init_from:
        _load_weights(pipe, cfg.init_from)
    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    unet.train()
    text_encoder.train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    n_params = {"unet": sum(p.numel() for p in unet.parameters()),
                "text_encoder": sum(p.numel() for p in text_encoder.parameters())}
    train_sched, _ = build_schedulers(cfg)

    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True)
    stream = SceneStream(cfg.seed, cfg.model.image_size, cfg.prompt_dropout)

    print(f"[base] params: unet {n_params['unet'] / 1e6:.2f}M, text encoder {n_params['text_encoder'] / 1e6:.2f}M; "
          f"{cfg.steps} steps x batch {cfg.batch_size}")
    log_path = out_dir / LOSS_LOG
    recent: list[float] = []
    start = time.perf_counter()
    with open(log_path, "w") as log, tqdm(range(1, cfg.steps + 1), desc="base", dynamic_ncols=True) as bar:
        for step in bar:
            x0, prompts, masks = stream.batch(cfg.batch_size, with_masks=True)  # (B, 3, H, W), B, (B, 1, H, W)
            ids = tokenize(tokenizer, prompts)  # (B, T)
            noise = torch.randn(x0.shape, generator=noise_gen)  # (B, 3, H, W)
            t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=noise_gen)  # (B,)
            n_high = round(cfg.high_noise_fraction * x0.shape[0])
            if n_high:
                t[:n_high] = torch.randint(cfg.high_noise_min_t, cfg.num_train_timesteps, (n_high,), generator=noise_gen)
            noisy = train_sched.add_noise(x0, noise, t)
            context = text_encoder(ids)[0]  # (B, T, D)
            pred = unet(noisy, t, encoder_hidden_states=context).sample  # (B, 3, H, W)
            target = noise if cfg.prediction_type == "epsilon" else train_sched.get_velocity(x0, noise, t)
            weight = 1.0 + (cfg.object_loss_weight - 1.0) * masks  # (B, 1, H, W)
            loss = (weight * (pred - target) ** 2).mean() / weight.mean()

            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            lr_sched.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(params)

            value = float(loss.detach())
            if not math.isfinite(value):
                raise RuntimeError(f"base pretraining diverged at step {step} (loss {value})")
            recent = (recent + [value])[-50:]
            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - start
                rec = {"step": step, "loss": value, "loss_avg50": float(np.mean(recent)),
                       "lr": lr_sched.get_last_lr()[0], "grad_norm": float(grad_norm),
                       "ema_decay": ema.cur_decay_value, "elapsed_s": round(elapsed, 2)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{rec['loss_avg50']:.4f}", lr=f"{rec['lr']:.2e}")
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                save_pipeline(pipe, ema, out_dir, cfg.save_dtype)

    elapsed = time.perf_counter() - start
    save_pipeline(pipe, ema, out_dir, cfg.save_dtype)

    # samples from the saved (EMA, fp16 -> fp32) weights, as users will load them
    from pixpref.models.diffusion import load_pipeline

    saved = load_pipeline(out_dir)
    grid = sample_grid(saved, cfg.sample_prompts, 8, cfg.sample_guidance_scale, cfg.seed, cfg.sample_steps)
    grid.save(out_dir / "samples.png")
    metrics = {
        "steps": cfg.steps,
        "final_loss_avg50": float(np.mean(recent)),
        "wall_s": round(elapsed, 1),
        "steps_per_s": round(cfg.steps / elapsed, 3),
        "params": n_params,
        "init_from": cfg.init_from,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"[base] done: {json.dumps(metrics)}")
    return metrics
