"""Tiny on-disk assets for end-to-end runs of ``train/train_ppd.py`` (import as ``from ppd_fixtures import ...``).

* :func:`make_pipeline_dir`: a random pixel-space ``PixprefPipeline`` (3 channels, 16x16) saved with
  ``save_pretrained``, so ``pixpref.models.diffusion.load_pipeline(folder)`` loads it;
* :func:`make_vlm_dir`: a random ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` saved with
  ``save_pretrained``, so ``pixpref.models.vlm.load_vlm(folder)`` loads it;
* :func:`make_pickapic`: a Pick-a-Pic v2 parquet file of small images, ``users`` x ``pairs_per_user``;
  each user prefers one colour channel, so the pairs carry a per-user signal.

Everything is built offline from configs with fixed seeds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

IMAGE_SIZE = 16
REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "toy" / "ppd_tiny.yaml"
TRAIN_SCRIPT = REPO / "train" / "train_ppd.py"


def make_pipeline_dir(path: Path, size: int = IMAGE_SIZE) -> Path:
    """A tiny pixel-space PixprefPipeline (UNet 16/32 channels, cross-attention at the 8x8 level)."""
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from pixpref.models.pipeline import PixprefPipeline
    from pixpref.models.text import build_text_encoder, build_tokenizer

    tok = build_tokenizer(max_length=8)
    text = build_text_encoder(len(tok), hidden_size=32, num_layers=1, num_heads=2, max_length=8, seed=0)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=size, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", clip_sample=False)
    pipe = PixprefPipeline(unet=unet, text_encoder=text, tokenizer=tok, scheduler=sched)
    pipe.save_pretrained(path)
    return Path(path)


def make_vlm_dir(path: Path) -> Path:
    """A tiny LLaVA and its processor (tests/tiny.py), saved as a local VLM folder."""
    from tiny import make_vlm

    model, proc = make_vlm()
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return Path(path)


def _image(rng: np.random.Generator, channel: int, strong: bool, size: int) -> np.ndarray:
    """(size, size, 3) uint8 noise image whose ``channel`` is bright (strong) or dim."""
    img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    if strong:
        img[..., channel] = rng.integers(160, 256, (size, size), dtype=np.uint8)
    return img


def make_pickapic(path: Path, users: int = 6, pairs_per_user: int = 12, size: int = IMAGE_SIZE, seed: int = 0) -> Path:
    """A Pick-a-Pic v2 parquet file: user u prefers images bright in channel u % 3; image 0 or 1 wins at random."""
    from pixpref.data.pickapic import PickapicWriter

    rng = np.random.default_rng(seed)
    colours, shapes = ("red", "green", "blue"), ("star", "circle", "square")
    with PickapicWriter(path, rows_per_group=16) as w:
        for u in range(users):
            for i in range(pairs_per_user):
                good, bad = _image(rng, u % 3, True, size), _image(rng, u % 3, False, size)
                first_wins = bool(rng.integers(0, 2))
                caption = f"a {colours[i % 3]} {shapes[(i // 3) % 3]}"
                w.write({
                    "caption": caption, "jpg_0": good if first_wins else bad, "jpg_1": bad if first_wins else good,
                    "label_0": 1.0 if first_wins else 0.0, "label_1": 0.0 if first_wins else 1.0,
                    "user_id": 100 + u,
                })
    return Path(path)


def make_assets(root: Path) -> dict[str, Path]:
    """All three assets under ``root``: {"pipeline", "vlm", "data"}."""
    root = Path(root)
    return {
        "pipeline": make_pipeline_dir(root / "pipeline"),
        "vlm": make_vlm_dir(root / "vlm"),
        "data": make_pickapic(root / "pairs.parquet"),
    }


def tiny_overrides(assets: dict[str, Path], output_dir: Path, **train: object) -> list[str]:
    """``--set`` arguments pointing the tiny config at ``assets`` and ``output_dir``, plus train.* extras."""
    sets = [
        f"model.base={assets['pipeline']}", f"user.vlm={assets['vlm']}", f"data.path={assets['data']}",
        f"train.output_dir={output_dir}",
    ]
    sets += [f"train.{k}={v}" for k, v in train.items()]
    return [arg for s in sets for arg in ("--set", s)]
