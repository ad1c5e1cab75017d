"""What a UNet is conditioned on, for any supported pipeline: text embeddings (+ SDXL's added
conditions) and clean latents from images. Used by training and by personalized sampling.

Supported pipelines: pixpref's ``PixprefPipeline`` (pixel or latent space), diffusers'
``StableDiffusionPipeline`` (SD 1.5) and ``StableDiffusionXLPipeline`` (SDXL: pooled text embeddings and
size/crop ``time_ids`` as ``added_cond_kwargs``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pixpref.errors import PixprefError


def is_sdxl(pipe: Any) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None or (
        getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"
    )


@torch.no_grad()
def encode_text(pipe: Any, prompts: list[str], device: torch.device | str) -> tuple[torch.Tensor, dict | None]:
    """Prompts -> (encoder_hidden_states (B, T, D), added_cond_kwargs or None)."""
    if is_sdxl(pipe):
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        proj_dim = (
            pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else pooled.shape[-1]
        )
        time_ids = pipe._get_add_time_ids(
            (size, size), (0, 0), (size, size), dtype=embeds.dtype, text_encoder_projection_dim=proj_dim
        ).to(device)  # (1, 6)
        return embeds, {"text_embeds": pooled, "time_ids": time_ids.repeat(len(prompts), 1)}
    embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
    return embeds, None


def images_to_tensor(images: Any) -> torch.Tensor:
    """uint8 (B, H, W, 3) array/tensor or a list of PIL images -> float (B, 3, H, W) in [-1, 1]."""
    if isinstance(images, list):
        images = np.stack([np.asarray(im.convert("RGB")) for im in images])
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise PixprefError(f"expected uint8 images of shape (B, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def to_latents(pipe: Any, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels (B, 3, H, W) in [-1, 1] -> what the UNet denoises (the pixels themselves without a VAE)."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return pixels
    dist = vae.encode(pixels.to(vae.dtype)).latent_dist
    latents = dist.sample(generator=generator)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor
