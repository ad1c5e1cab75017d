"""Tiny random models of the real classes, shared by tests (import as ``from tiny import ...``)."""

from __future__ import annotations

import torch


def make_unet(kind: str = "sd15", cross_attention_dim: int | None = None, layers_per_block: int = 1):
    """A tiny UNet2DConditionModel shaped like SD 1.5 (``sd15``) or SDXL (``sdxl``: text_time added
    conditioning, linear projections, 2 transformer layers in the second block). 4 latent channels, 8x8."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if kind == "sd15":
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
            layers_per_block=layers_per_block, norm_num_groups=8, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=cross_attention_dim or 32,
        )
    elif kind == "sdxl":
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
            layers_per_block=layers_per_block, norm_num_groups=8, attention_head_dim=(2, 4),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
            cross_attention_dim=cross_attention_dim or 64,
        )
    else:
        raise ValueError(kind)
    unet.requires_grad_(False)
    return unet.eval()


def sdxl_added(batch: int, generator: torch.Generator | None = None) -> dict:
    """added_cond_kwargs for the tiny SDXL-shaped UNet (pooled text 32 + 6 time ids x 8 = 80)."""
    return {"text_embeds": torch.randn(batch, 32, generator=generator),
            "time_ids": torch.randn(batch, 6, generator=generator)}
