"""Validation image grids during training: for a few users, base vs personalized images, same seeds."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixpref.toyworld.render import make_grid


@torch.no_grad()
def validation_grid(model: Any, pipe: Any, arrays: Any, plan: Any, chunk_embeddings: torch.Tensor, path: Path,
                    tc: Any, num_images: int = 4) -> Path:
    """Rows: per validation user, base images then personalized images for that user's first prompt."""
    rows = []
    seen_users: list[str] = []
    for pos, chunk in enumerate(plan.chunks):
        if chunk.user_id in seen_users:
            continue
        seen_users.append(chunk.user_id)
        prompt = arrays.prompts[chunk.indices[0]]
        tokens = model.adapter.encode(chunk_embeddings[pos:pos + 1].to(pipe.unet.device))
        tokens = tokens.expand(num_images, -1, -1)
        for user_tokens in (None, tokens):
            kwargs = None
            if user_tokens is not None:
                kwargs = model.adapter.attention_kwargs(torch.cat([user_tokens, user_tokens]), scale=1.0)
            # the base row is the frozen base model (LoRA, if trained, disabled), the same seeds
            context = model.reference() if user_tokens is None else contextlib.nullcontext()
            with context:
                images = pipe(prompt, num_images_per_prompt=num_images, num_inference_steps=tc.validation_steps,
                              guidance_scale=2.0, generator=torch.Generator().manual_seed(tc.seed),
                              cross_attention_kwargs=kwargs, output_type="np").images
            rows.append((np.asarray(images) * 255 + 0.5).clip(0, 255).astype(np.uint8))
        if len(seen_users) >= tc.validation_users:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(np.concatenate(rows), ncols=num_images, upscale=2).save(path)
    return path
