"""The personalized UNet and one preference-loss computation, shared by ``train/train_ppd.py``, the
tests and the benchmarks.

:class:`PersonalizedUNet` wraps a frozen UNet and its trainable :class:`UserAdapter` in one module, so
``accelerate.prepare`` (DDP) sees a normal forward. The reference model is the same UNet with the user
branch off (and LoRA disabled, if any) — never a second copy.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pixpref.errors import PixprefError, unknown_name
from pixpref.personalize.adapter import UserAdapter, drop_user_tokens
from pixpref.personalize.inversion import ddim_invert, eps_from_model_output
from pixpref.personalize.losses import PreferenceLoss, per_sample_mse, split_pairs, target_for

#: which model's DDIM inversion gives InPO its x_t: the current policy (InPO) or the frozen reference
INVERSION_MODELS = ("policy", "reference")


class PersonalizedUNet(nn.Module):
    """Frozen UNet + trainable user adapter. ``forward(..., user_embedding=None)`` is the base UNet."""

    def __init__(self, unet: nn.Module, adapter: UserAdapter):
        super().__init__()
        self.unet = unet
        self.adapter = adapter
        adapter.install(unet)

    def forward(
        self,
        sample: torch.Tensor,  # (N, C, H, W)
        timestep: torch.Tensor,  # (N,)
        encoder_hidden_states: torch.Tensor,  # (N, T, D)
        user_embedding: torch.Tensor | None = None,  # (N, T_u, D_vlm)
        user_mask: torch.Tensor | None = None,  # (N,) bool, False = this sample gets no user
        user_scale: float | None = None,
        added_cond_kwargs: dict | None = None,
    ) -> torch.Tensor:
        tokens = None
        if user_embedding is not None:
            tokens = self.adapter.encode(user_embedding.to(next(self.adapter.parameters()).dtype))
        kwargs = self.adapter.attention_kwargs(tokens, scale=user_scale, mask=user_mask)
        return self.unet(
            sample, timestep, encoder_hidden_states,
            cross_attention_kwargs=kwargs, added_cond_kwargs=added_cond_kwargs, return_dict=False,
        )[0]

    @contextlib.contextmanager
    def reference(self):
        """Inside this block the UNet is the frozen reference: LoRA layers (if any) disabled."""
        has_lora = getattr(self.unet, "_hf_peft_config_loaded", False)
        if has_lora:
            self.unet.disable_adapters()
        try:
            yield self
        finally:
            if has_lora:
                self.unet.enable_adapters()


@dataclass
class PairBatch:
    """One batch of B pairs, already on the device.

    x0_w, x0_l: clean latents (B, C, H, W) of the chosen / rejected images.
    text: encoder hidden states (B, T, D); added: SDXL added_cond_kwargs for B or None.
    user: user embeddings (B, T_u, D_vlm) from a *different* chunk of the same user's pairs.
    label: (B,) probability that the chosen image is preferred (1, or 0.5 for a tie).
    """

    x0_w: torch.Tensor
    x0_l: torch.Tensor
    text: torch.Tensor
    user: torch.Tensor
    label: torch.Tensor
    added: dict | None = None


def _double(added: dict | None) -> dict | None:
    return None if added is None else {k: torch.cat([v, v]) for k, v in added.items()}


def preference_loss(
    model: PersonalizedUNet | Any,
    batch: PairBatch,
    loss: PreferenceLoss,
    scheduler: Any,
    generator: torch.Generator,
    beta: float | None = None,
    user_dropout: float = 0.0,
    inversion_steps: int = 10,
    inversion_eta: float = 0.1,
    timestep_range: tuple[int, int] | None = None,
    inversion_model: str = "policy",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one pair batch. Winners and losers share the noise and the timestep (same t per pair).

    ``generator`` (CPU) drives every random draw, so a step is reproducible from its seed.
    ``model`` may be a DDP-wrapped :class:`PersonalizedUNet`; ``reference()`` is looked up on the inner one.
    """
    inner = model.module if hasattr(model, "module") else model
    b = batch.x0_w.shape[0]
    device = batch.x0_w.device
    n_train = scheduler.config.num_train_timesteps
    lo, hi = timestep_range or (0, n_train)
    if not 0 <= lo < hi <= n_train:
        raise PixprefError(f"timestep_range must satisfy 0 <= lo < hi <= {n_train}, got {(lo, hi)}")
    prediction_type = scheduler.config.prediction_type

    t = torch.randint(lo, hi, (b,), generator=generator).to(device)  # (B,)
    if not loss.needs_losers:  # SFT: the winners alone, B images
        keep = drop_user_tokens(batch.user, user_dropout, generator).to(device)
        noise = torch.randn(batch.x0_w.shape, generator=generator).to(device, batch.x0_w.dtype)
        x_t = scheduler.add_noise(batch.x0_w, noise, t)
        target = target_for(prediction_type, scheduler, batch.x0_w, noise, t)
        pred = model(x_t, t, batch.text, user_embedding=batch.user, user_mask=keep, added_cond_kwargs=batch.added)
        value, metrics = loss(per_sample_mse(pred, target))
        metrics["user_kept"] = keep.float().mean()
        return value, metrics
    t2 = torch.cat([t, t])  # (2B,) same timestep for winner and loser
    x0 = torch.cat([batch.x0_w, batch.x0_l])  # (2B, C, H, W)
    text = torch.cat([batch.text, batch.text])
    added = _double(batch.added)
    user = torch.cat([batch.user, batch.user])
    keep = drop_user_tokens(batch.user, user_dropout, generator).to(device)  # (B,) same for both halves
    mask = torch.cat([keep, keep])

    if loss.noising == "forward":
        noise = torch.randn(batch.x0_w.shape, generator=generator).to(device, x0.dtype)
        noise = torch.cat([noise, noise])  # (2B, ...) shared noise
        x_t = scheduler.add_noise(x0, noise, t2)
        target = target_for(prediction_type, scheduler, x0, noise, t2)
    elif loss.noising == "ddim_inversion":
        def eps_fn(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
            if inversion_model == "reference":  # invert with the frozen base model (adapter off)
                with inner.reference():
                    out = inner(x, tt, text, user_embedding=None, added_cond_kwargs=added)
            else:  # the current policy, as InPO does
                out = model(x, tt, text, user_embedding=user, user_mask=mask, added_cond_kwargs=added)
            return eps_from_model_output(prediction_type, out, x, tt, scheduler)

        if inversion_model not in INVERSION_MODELS:
            raise unknown_name("inversion model", inversion_model, INVERSION_MODELS)
        with torch.no_grad():
            x_t, eps_star = ddim_invert(
                x0, t2, eps_fn, scheduler, num_steps=inversion_steps, eta=inversion_eta, generator=generator
            )
        target = target_for(prediction_type, scheduler, x0, eps_star, t2)
    else:  # pragma: no cover - registry guards this
        raise PixprefError(f"unknown noising {loss.noising!r}")

    pred = model(x_t, t2, text, user_embedding=user, user_mask=mask, added_cond_kwargs=added)
    err_w, err_l = split_pairs(per_sample_mse(pred, target))
    if loss.needs_reference:
        with torch.no_grad(), inner.reference():
            ref = inner(x_t, t2, text, user_embedding=None, added_cond_kwargs=added)
        ref_w, ref_l = split_pairs(per_sample_mse(ref, target))
        value, metrics = loss(err_w, err_l, ref_w, ref_l, beta=beta, label=batch.label)
    else:
        value, metrics = loss(err_w)
    metrics["user_kept"] = keep.float().mean()
    return value, metrics
