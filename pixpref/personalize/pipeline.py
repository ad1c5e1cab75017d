"""Personalized sampling: a base pipeline plus a trained user adapter.

    sampler = PersonalizedSampler.from_pretrained("toy")          # shipped base model + DPO adapter
    emb = sampler.embed_user(pairs)                                # (T, D) from a user's examples
    images = sampler(prompt="a red star", user=emb, user_scale=1.0, num_images=4, seed=0)
    mixed = interpolate_users(emb_a, emb_b, 0.5)

With ``user=None`` (or ``user_scale=0``) the output equals the base pipeline's for the same seed: the
adapter adds exact zeros.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixpref.errors import PixprefError, unknown_name
from pixpref.personalize.adapter import UserAdapter
from pixpref.personalize.embeddings import check_embedding, read_user_encoder_spec

SHIPPED_ADAPTERS = ("dpo", "inpo")


def shipped_adapter_dir(name: str = "dpo") -> Path:
    if name not in SHIPPED_ADAPTERS:
        raise unknown_name("shipped adapter", name, SHIPPED_ADAPTERS)
    return Path(__file__).resolve().parent.parent / "pretrained" / "toy" / f"adapter_{name}"


def adapter_dir(name_or_path: str | Path) -> Path:
    """The folder of a shipped adapter ("dpo", "inpo") or the given adapter folder."""
    return shipped_adapter_dir(str(name_or_path)) if str(name_or_path) in SHIPPED_ADAPTERS else Path(name_or_path)


def load_lora(unet: Any, folder: Path) -> bool:
    """Attach the UNet LoRA trained beside an adapter (``unet_lora.safetensors``), if there is one."""
    path = Path(folder) / "unet_lora.safetensors"
    if not path.is_file():
        return False
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(path))
    ranks = {v.shape[0] for k, v in state.items() if "lora_A" in k}
    if len(ranks) != 1:
        raise PixprefError(f"{path} does not look like a pixpref UNet LoRA (ranks found: {sorted(ranks)})")
    rank = ranks.pop()
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    set_peft_model_state_dict(unet, state)
    return True


def interpolate_users(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Linear interpolation (1 - alpha) * a + alpha * b of two user embeddings of the same shape."""
    if a.shape != b.shape:
        raise PixprefError(f"cannot interpolate user embeddings of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise PixprefError(f"interpolation weight must be in [0, 1], got {alpha}")
    return (1.0 - alpha) * a + alpha * b


class PersonalizedSampler:
    """Wraps any supported text-to-image pipeline and installs a :class:`UserAdapter` on its UNet."""

    def __init__(self, pipe: Any, adapter: UserAdapter, encoder: Any = None, base_name: str = ""):
        self.pipe = pipe
        self.base_name = base_name
        self.adapter = adapter.to(pipe.unet.device).eval().requires_grad_(False)
        self.adapter.install(pipe.unet)
        self._encoder = encoder
        self.encoder_spec: dict | None = None  # set by from_pretrained from the adapter folder

    @classmethod
    def from_pretrained(
        cls, base: str = "toy", adapter: str | Path = "dpo", device: str = "cpu", encoder: Any = None
    ) -> PersonalizedSampler:
        """``base``: model name or folder; ``adapter``: "dpo"/"inpo" (shipped) or an adapter folder."""
        from pixpref.models.diffusion import load_pipeline

        pipe = load_pipeline(base, device=device)
        pipe.set_progress_bar_config(disable=True)
        folder = adapter_dir(adapter)
        load_lora(pipe.unet, folder)
        ada = UserAdapter.from_pretrained(folder, pipe.unet).float()
        sampler = cls(pipe, ada, encoder, base_name=str(base))
        sampler.encoder_spec = read_user_encoder_spec(folder)
        return sampler

    @property
    def encoder(self):
        """The user encoder (VLM), loaded on first use."""
        if self._encoder is None:
            from pixpref.personalize.user_encoder import UserEncoder, config_from_spec

            spec = self.encoder_spec or read_user_encoder_spec("")
            if spec.get("source", "vlm") != "vlm":
                raise PixprefError(f"this adapter was trained on {spec['source']!r} embeddings, not on a VLM's; "
                                   "pass a user embedding of that kind instead of examples")
            config = config_from_spec(spec)
            self._encoder = UserEncoder.from_pretrained(config.vlm, config)
        return self._encoder

    def embed_user(self, pairs) -> torch.Tensor:
        """A user's (prompt, chosen, rejected) examples -> (T, D) embedding."""
        return self.encoder.encode_one(pairs)

    def check_user(self, user: torch.Tensor) -> torch.Tensor:
        cfg = self.adapter.config
        user = check_embedding(user, expected_dim=cfg.embed_dim)
        if user.shape[-2] != cfg.num_tokens:
            raise PixprefError(
                f"user embedding has {user.shape[-2]} tokens; this adapter expects {cfg.num_tokens} "
                "(was it made with another VLM or pooling?)"
            )
        return user

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        user: torch.Tensor | None = None,
        user_scale: float | None = None,
        num_images: int = 4,
        seed: int = 0,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        output_type: str = "np",
        user_guidance: str = "text",
        user_start: float | None = None,
        user_end: float | None = None,
    ):
        """Images for ``prompt`` (same seeds with and without a user). Returns what the pipeline returns.

        ``user_guidance``: "joint" (classifier-free guidance amplifies the user too) or "text"; see
        :data:`pixpref.personalize.names.USER_GUIDANCE_MODES`. ``user_start`` / ``user_end``: the fractions
        of the denoising steps between which the user branch runs (:meth:`UserAdapter.step_window`);
        None: the adapter's saved window (``adapter.config.start`` / ``end``). ``user_scale``: the weight of
        the user branch; None: the adapter's saved ``adapter.config.scale`` (the strength it was tuned at).
        """
        from pixpref.models.diffusion import default_settings

        if not isinstance(prompt, str) or not prompt.strip():
            raise PixprefError("the prompt must be a non-empty string")
        if num_images < 1:
            raise PixprefError(f"num_images must be >= 1, got {num_images}")
        user_scale = self.adapter.config.scale if user_scale is None else user_scale
        if not np.isfinite(user_scale):
            raise PixprefError(f"user_scale must be finite, got {user_scale}")
        steps, guidance = default_settings(self.pipe, self.base_name)
        steps = num_inference_steps or steps
        guidance = guidance if guidance_scale is None else guidance_scale
        device = self.pipe.unet.device
        kwargs, extra = None, {}
        user_start = self.adapter.config.start if user_start is None else user_start
        user_end = self.adapter.config.end if user_end is None else user_end
        if not 0.0 <= user_start < user_end <= 1.0:
            raise PixprefError(f"need 0 <= user_start < user_end <= 1, got {user_start} and {user_end}")
        if user is not None and user_scale != 0.0:
            user = self.check_user(user)
            emb = user if user.ndim == 3 else user[None]  # (1|N, T, D)
            tokens = self.adapter.encode(emb.to(device, torch.float32))  # (1|N, T_out, C)
            tokens = tokens.expand(num_images, -1, -1) if tokens.shape[0] == 1 else tokens
            kwargs = self.adapter.guided_kwargs(tokens.to(self.pipe.unet.dtype), guidance > 1.0, scale=user_scale,
                                                user_guidance=user_guidance)
            callback = self.adapter.step_window(kwargs, steps, user_start, user_end)
            extra = {} if callback is None else {"callback_on_step_end": callback}
        generator = torch.Generator().manual_seed(int(seed))
        return self.pipe(
            prompt, num_images_per_prompt=num_images, num_inference_steps=steps, guidance_scale=guidance,
            generator=generator, cross_attention_kwargs=kwargs, output_type=output_type, **extra,
        ).images
