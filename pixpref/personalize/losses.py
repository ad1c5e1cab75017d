"""Preference losses for diffusion fine-tuning: a registry of pure functions (no models inside).

Each loss takes per-sample denoising errors (see :func:`per_sample_mse`) of the policy and, where it needs
one, the frozen reference, on the winner and loser halves of a pair batch (same noise and timestep for both
halves), and returns ``(loss, metrics)``; metrics are detached 0-dim tensors.

    spec = get_loss("dpo")
    err = per_sample_mse(model_pred, target)              # (2B,)
    err_w, err_l = split_pairs(err)                       # (B,), (B,)
    loss, metrics = spec(err_w, err_l, ref_w, ref_l, beta=spec.default_beta)

Registered: ``dpo`` (Diffusion-DPO, Wallace et al. 2023), ``inpo`` (DDIM-InPO, Lu et al. 2025: the same
objective on DDIM-inverted latents, built by :mod:`pixpref.personalize.inversion`), ``sft`` (winners only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from pixpref.errors import PixprefError, unknown_name

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
Metrics = dict[str, torch.Tensor]


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, ...) x (N, ...) -> (N,): mean over all non-batch dims of (pred - target)^2, in float32."""
    if pred.shape != target.shape:
        raise PixprefError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    diff = pred.float() - target.float()
    return diff.pow(2).mean(dim=tuple(range(1, diff.ndim)))


def split_pairs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B, ...) -> winners (B, ...), losers (B, ...) from a batch laid out as cat([winners, losers])."""
    if x.shape[0] % 2:
        raise PixprefError(f"a pair batch needs an even size (winners then losers), got {x.shape[0]}")
    w, l_ = x.chunk(2)
    return w, l_


def target_for(
    prediction_type: str, scheduler: Any, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The regression target of a UNet with ``prediction_type`` for x_t built from (x0, noise, timesteps).

    epsilon -> noise; v_prediction -> ``scheduler.get_velocity(x0, noise, t)``; sample -> x0. For InPO pass
    the reparametrised eps* as ``noise``.
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    if prediction_type == "sample":
        return x0
    raise unknown_name("prediction type", prediction_type, PREDICTION_TYPES)


def _check_errors(**errors: torch.Tensor | None) -> int:
    sizes = set()
    for name, err in errors.items():
        if err is None:
            raise PixprefError(f"loss input {name} is missing")
        if err.ndim != 1:
            raise PixprefError(
                f"loss input {name} must be per-sample errors of shape (B,), got {tuple(err.shape)}"
            )
        sizes.add(err.shape[0])
    if len(sizes) != 1:
        raise PixprefError(f"loss inputs must all have the same batch size, got {sorted(sizes)}")
    return sizes.pop()


def dpo_loss(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
    label: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Diffusion-DPO on per-sample errors (B,) of policy and reference on winners (w) and losers (l).

    inside = -beta/2 * ((err_w - err_l) - (ref_w - ref_l)); loss = -log sigmoid(inside), averaged. With a
    soft ``label`` y (B,) in [0, 1] (probability that the "w" half is preferred; 0.5 for a tie) the loss
    is -(y log sigmoid(inside) + (1 - y) log sigmoid(-inside)).
    """
    if not beta > 0:
        raise PixprefError(f"DPO beta must be > 0, got {beta}")
    _check_errors(model_err_w=model_err_w, model_err_l=model_err_l, ref_err_w=ref_err_w, ref_err_l=ref_err_l)
    ref_err_w, ref_err_l = ref_err_w.detach(), ref_err_l.detach()
    reward_w = -0.5 * beta * (model_err_w - ref_err_w)  # implicit reward of the winner, (B,)
    reward_l = -0.5 * beta * (model_err_l - ref_err_l)
    inside = reward_w - reward_l  # (B,)
    if label is None:
        loss = -F.logsigmoid(inside).mean()
        y = torch.ones_like(inside)
    else:
        y = label.to(inside.dtype).reshape(-1)
        if y.shape != inside.shape:
            raise PixprefError(f"label must have shape {tuple(inside.shape)}, got {tuple(label.shape)}")
        if bool(((y < 0) | (y > 1)).any()):
            raise PixprefError("labels must lie in [0, 1] (1: first half preferred, 0.5: tie)")
        loss = -(y * F.logsigmoid(inside) + (1 - y) * F.logsigmoid(-inside)).mean()
    with torch.no_grad():
        # agreement of the implicit preference with the label; exact ties (inside == 0) count one half
        agree = y * (inside > 0).float() + (1 - y) * (inside < 0).float() + 0.5 * (inside == 0).float()
        metrics = {
            "implicit_acc": agree.mean(),
            "mse_w": model_err_w.detach().mean(),
            "mse_l": model_err_l.detach().mean(),
            "ref_mse_w": ref_err_w.mean(),
            "ref_mse_l": ref_err_l.mean(),
            "reward_w": reward_w.detach().mean(),
            "reward_l": reward_l.detach().mean(),
            "reward_margin": inside.detach().mean(),
        }
    return loss, metrics


def sft_loss(model_err_w: torch.Tensor, *_: Any, **__: Any) -> tuple[torch.Tensor, Metrics]:
    """Supervised fine-tuning on winners only: the mean policy error on the winner half."""
    _check_errors(model_err_w=model_err_w)
    loss = model_err_w.mean()
    return loss, {"mse_w": loss.detach()}


@dataclass(frozen=True)
class PreferenceLoss:
    """A registered loss: the pure function plus what a trainer must prepare for it.

    Attributes:
        name: registry name.
        fn: ``fn(model_err_w, model_err_l, ref_err_w, ref_err_l, beta=..., label=...) -> (loss, metrics)``.
        default_beta: KL strength used when the config gives none (None for losses without one).
        needs_reference: whether the frozen reference errors must be computed.
        noising: "forward" (x_t = sqrt(abar) x0 + sqrt(1 - abar) eps with fresh noise shared by the pair) or
            "ddim_inversion" (x_t and eps* from :func:`pixpref.personalize.inversion.ddim_invert`).
        needs_losers: whether the loser half is used at all.
    """

    name: str
    fn: Callable[..., tuple[torch.Tensor, Metrics]]
    default_beta: float | None
    needs_reference: bool
    noising: Literal["forward", "ddim_inversion"]
    needs_losers: bool

    def __call__(
        self,
        model_err_w: torch.Tensor,
        model_err_l: torch.Tensor | None = None,
        ref_err_w: torch.Tensor | None = None,
        ref_err_l: torch.Tensor | None = None,
        beta: float | None = None,
        label: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Metrics]:
        if not self.needs_reference:
            return self.fn(model_err_w)
        beta = self.default_beta if beta is None else beta
        return self.fn(model_err_w, model_err_l, ref_err_w, ref_err_l, beta=beta, label=label)


LOSSES: dict[str, PreferenceLoss] = {
    # beta in the per-pixel-mean convention; 5000 as in the Diffusion-DPO launch scripts (SD1.5 and SDXL)
    "dpo": PreferenceLoss(
        "dpo", dpo_loss, 5000.0, needs_reference=True, noising="forward", needs_losers=True
    ),
    # InPO: the DPO objective on DDIM-inverted (x_t, eps*); 2000 as in InPO for SD1.5
    "inpo": PreferenceLoss(
        "inpo", dpo_loss, 2000.0, needs_reference=True, noising="ddim_inversion", needs_losers=True
    ),
    "sft": PreferenceLoss(
        "sft", sft_loss, None, needs_reference=False, noising="forward", needs_losers=False
    ),
}


def get_loss(name: str) -> PreferenceLoss:
    """The registered loss ``name``; unknown names raise PixprefError listing the valid ones."""
    if name not in LOSSES:
        raise unknown_name("preference loss", name, LOSSES)
    return LOSSES[name]
