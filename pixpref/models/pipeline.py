"""``PixprefPipeline``: text-to-image sampling for a UNet conditioned on a CLIP text encoder.

The pipeline follows diffusers conventions (``register_modules``, ``save_pretrained`` /
``from_pretrained`` with the standard folder layout ``model_index.json``, ``unet/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/`` and optional ``vae/``). With ``vae=None`` the UNet works in pixel space
(the toy world's 32x32 model); with a VAE the UNet works on latents that are decoded with the VAE's
scaling factor, as in Stable Diffusion 1.5.

``cross_attention_kwargs`` is passed unchanged to every UNet call, so attention processors installed on
the UNet (e.g. the user cross-attention adapter) can read extra inputs from it. With classifier-free
guidance the UNet batch is ``[unconditional; conditional]`` (``2 * B`` rows, unconditional first).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

OUTPUT_TYPES = ("pil", "np", "pt")


def tokenize(tokenizer, prompts: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
    """Prompts -> padded token ids ``(B, T)`` with ``T = tokenizer.model_max_length``."""
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids.to(device)


class PixprefPipeline(DiffusionPipeline):
    """Text-to-image diffusion pipeline (pixel space without a VAE, latent space with one).

    Args:
        unet: ``UNet2DConditionModel`` whose ``cross_attention_dim`` equals the text encoder's width.
        text_encoder: ``CLIPTextModel``; its ``last_hidden_state`` ``(B, T, D)`` conditions the UNet.
        tokenizer: a transformers tokenizer padding to ``model_max_length``.
        scheduler: any diffusers scheduler (DDIM by default for the toy model).
        vae: optional ``AutoencoderKL``; ``None`` means the UNet denoises pixels in ``[-1, 1]``.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae"]

    def __init__(self, unet, text_encoder, tokenizer, scheduler, vae=None):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, vae=vae)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (1 in pixel space)."""
        if getattr(self, "vae", None) is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ---- step 1: inputs -------------------------------------------------------------------------------
    def check_inputs(self, prompt, num_images_per_prompt, num_inference_steps, guidance_scale, negative_prompt,
                     output_type, prompt_embeds) -> None:
        """Raise ``ValueError`` with a short message on bad arguments (never fix them silently)."""
        if prompt is None and prompt_embeds is None:
            raise ValueError("pass `prompt` (a string or list of strings) or `prompt_embeds`")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("pass either `prompt` or `prompt_embeds`, not both")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}")
        if negative_prompt is not None and prompt is not None:
            n_prompt = 1 if isinstance(prompt, str) else len(prompt)
            n_neg = 1 if isinstance(negative_prompt, str) else len(negative_prompt)
            if n_neg not in (1, n_prompt):
                raise ValueError(f"`negative_prompt` has {n_neg} entries but `prompt` has {n_prompt}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt!r}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}")
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be >= 0, got {guidance_scale}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; valid options: {', '.join(OUTPUT_TYPES)}")

    # ---- step 2: text ---------------------------------------------------------------------------------
    def _embed(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        ids = tokenize(self.tokenizer, prompts, device)  # (B, T)
        return self.text_encoder(ids)[0]  # (B, T, D) last hidden state

    def encode_prompt(
        self,
        prompt: str | list[str],
        device: torch.device,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode prompts -> ``(prompt_embeds, negative_prompt_embeds)``, each ``(B * n, T, D)``.

        The unconditional embedding is the empty prompt (what prompt dropout trained), or the negative
        prompt when given; it is ``None`` without classifier-free guidance.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        embeds = self._embed(prompts, device).repeat_interleave(num_images_per_prompt, dim=0)
        negative = None
        if do_classifier_free_guidance:
            if negative_prompt is None:
                neg = [""] * len(prompts)
            else:
                neg = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
                neg = neg * len(prompts) if len(neg) == 1 else neg
            negative = self._embed(neg, device).repeat_interleave(num_images_per_prompt, dim=0)
        return embeds, negative

    # ---- step 3: noise --------------------------------------------------------------------------------
    def prepare_latents(self, batch_size, num_channels, height, width, dtype, device, generator, latents=None):
        """Initial noise ``(B, C, H / f, W / f)`` scaled by the scheduler's ``init_noise_sigma``."""
        shape = (batch_size, num_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}")
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    def _step_kwargs(self, generator, eta: float) -> dict[str, Any]:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    # ---- step 5: decode -------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (or pixels) -> images ``(B, 3, H, W)`` in ``[0, 1]``, float32."""
        if getattr(self, "vae", None) is not None:
            latents = latents / self.vae.config.scaling_factor
            images = self.vae.decode(latents.to(self.vae.dtype)).sample
        else:
            images = latents
        return (images.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        negative_prompt: str | list[str] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        output_type: str = "pil",
        latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        eta: float = 0.0,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ):
        """Generate images. ``guidance_scale <= 1`` disables classifier-free guidance.

        ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`` runs after every denoising step,
        as in diffusers' pipelines: ``callback_kwargs`` holds the tensors named in
        ``callback_on_step_end_tensor_inputs`` (only ``"latents"``), and a returned ``"latents"`` replaces them.

        Returns ``ImagePipelineOutput(images=...)`` (PIL list, ``(N, H, W, 3)`` float array in [0, 1], or
        ``(N, 3, H, W)`` tensor in [0, 1]) or a tuple when ``return_dict=False``.
        """
        # 1. check inputs
        self.check_inputs(prompt, num_images_per_prompt, num_inference_steps, guidance_scale, negative_prompt,
                          output_type, prompt_embeds)
        unknown = set(callback_on_step_end_tensor_inputs) - {"latents"}
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs can only name 'latents', got {sorted(unknown)}")
        device = self._execution_device
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        do_cfg = guidance_scale > 1.0

        # 2. encode the prompt: (B, T, D) each
        if prompt_embeds is None:
            prompt_embeds, negative_prompt_embeds = self.encode_prompt(
                prompt, device, num_images_per_prompt, do_cfg, negative_prompt
            )
        else:
            prompt_embeds = prompt_embeds.to(device).repeat_interleave(num_images_per_prompt, dim=0)
            if do_cfg:
                if negative_prompt_embeds is None:
                    negative_prompt_embeds = self._embed([""], device).expand_as(prompt_embeds)
                else:
                    negative_prompt_embeds = negative_prompt_embeds.to(device).repeat_interleave(
                        num_images_per_prompt, dim=0)
        context = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds  # (2B|B, T, D)
        batch = prompt_embeds.shape[0]

        # 3. prepare timesteps and initial noise: (B, C, h, w)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = self.prepare_latents(batch, self.unet.config.in_channels, height, width, prompt_embeds.dtype,
                                       device, generator, latents)
        step_kwargs = self._step_kwargs(generator, eta)

        # 4. denoise with classifier-free guidance
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                model_in = torch.cat([latents] * 2) if do_cfg else latents  # (2B|B, C, h, w)
                model_in = self.scheduler.scale_model_input(model_in, t)
                noise_pred = self.unet(
                    model_in, t, encoder_hidden_states=context, cross_attention_kwargs=cross_attention_kwargs
                ).sample
                if do_cfg:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
                if callback_on_step_end is not None:
                    out_kwargs = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                    latents = out_kwargs.get("latents", latents)
                progress.update()

        # 5. decode to images in [0, 1]
        images = self.decode(latents)  # (B, 3, H, W)
        if output_type == "pt":
            out: Any = images
        else:
            arr = images.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)  # (B, H, W, 3)
            out = self.numpy_to_pil(arr) if output_type == "pil" else arr
        self.maybe_free_model_hooks()
        if not return_dict:
            return (out,)
        return ImagePipelineOutput(images=out)
