"""DDIM inversion for DDIM-InPO: noisy latents and reparametrised noise targets from the current model.

For clean latents x0 (B, C, H, W) and per-sample timesteps t (B,), run the DDIM ODE *upwards* from x0 to
each sample's own t on a coarse grid (default 10 steps), with a little fresh noise (eta), using the model's
own noise predictions; then the target is the noise that explains the result,

    eps* = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t),  so that  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps*.

Every sample has its own grid 0 -> t_i, so one batch can mix timesteps (the InPO reference code uses the
first sample's t for the whole batch). Grid for sample i: levels s_0 = "clean" (abar = 1) and
s_k = round(k * t_i / N), k = 1..N; a step whose two levels coincide (t_i < N) leaves the sample unchanged.
Each step from level a to level b evaluates the model at the *destination* timestep b on the current
latent, as diffusers' ``DDIMInverseScheduler`` does, and moves

    x_b = sqrt(abar_b) * x0_hat + sqrt(1 - abar_b - sigma^2) * eps + sigma * z,
    x0_hat = (x_a - sqrt(1 - abar_a) * eps) / sqrt(abar_a),
    sigma = eta * sqrt((1 - abar_a) / (1 - abar_b) * (1 - abar_b / abar_a))   (0 for the first step),

in at least float32.

``eps_fn(x, t) -> eps`` is any callable (conditional, guided, with adapter kwargs); it is called under
``torch.no_grad()`` N times on the whole batch. For a v-prediction model wrap it with
:func:`eps_from_model_output`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pixpref.errors import PixprefError, unknown_name

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _alphas_cumprod(schedule: Any) -> torch.Tensor:
    """Scheduler (anything with ``alphas_cumprod``) or a 1-D tensor -> float32 abar table (T,)."""
    table = getattr(schedule, "alphas_cumprod", schedule)
    if not isinstance(table, torch.Tensor) or table.ndim != 1:
        raise PixprefError("expected a scheduler with alphas_cumprod or a 1-D tensor of cumulative alphas")
    return table.detach().to(torch.float32)


def inversion_grid(timesteps: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Per-sample integer levels (B, N): level k of sample i is round(k * t_i / N), k = 1..N (last = t_i)."""
    k = torch.arange(1, num_steps + 1, device=timesteps.device)  # (N,)
    # integer round-half-up of t * k / N (no float64, which some accelerators lack)
    return (2 * timesteps.long()[:, None] * k[None, :] + num_steps) // (2 * num_steps)  # (B, N)


def eps_from_model_output(
    prediction_type: str, output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, schedule: Any
) -> torch.Tensor:
    """Convert a UNet output of ``prediction_type`` at (x_t, t) to a noise prediction eps."""
    abar = _alphas_cumprod(schedule).to(x_t.device)[timesteps].view(-1, *([1] * (x_t.ndim - 1)))
    a, s = abar.sqrt().to(x_t.dtype), (1 - abar).sqrt().to(x_t.dtype)
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":  # v = a * eps - s * x0  ->  eps = a * v + s * x_t
        return a * output + s * x_t
    if prediction_type == "sample":
        return (x_t - a * output) / s
    raise unknown_name("prediction type", prediction_type, PREDICTION_TYPES)


@torch.no_grad()
def ddim_invert(
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    eps_fn: EpsFn,
    schedule: Any,
    num_steps: int = 10,
    eta: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM-invert clean latents to per-sample timesteps; return (x_t, eps*), both shaped like ``x0``.

    Args:
        x0: clean latents (B, C, H, W).
        timesteps: integer timesteps (B,), each in [0, T - 1]; samples may differ.
        eps_fn: ``eps_fn(x (B, C, H, W), t (B,) long) -> eps (B, C, H, W)``.
        schedule: a diffusers scheduler (its ``alphas_cumprod``) or the abar table itself.
        num_steps: inverse steps from the clean latent up to t (the InPO default is 10).
        eta: scale of fresh noise added at each step (0 = deterministic DDIM inversion; InPO uses 0.1).
        generator: random generator for that noise.
    """
    abar_table = _alphas_cumprod(schedule).to(x0.device)  # (T,)
    if timesteps.ndim != 1 or timesteps.shape[0] != x0.shape[0]:
        raise PixprefError(f"timesteps must have shape ({x0.shape[0]},), got {tuple(timesteps.shape)}")
    if timesteps.dtype.is_floating_point or timesteps.dtype == torch.bool:
        raise PixprefError("timesteps must be integers")
    if bool(((timesteps < 0) | (timesteps >= abar_table.shape[0])).any()):
        raise PixprefError(f"timesteps must lie in [0, {abar_table.shape[0] - 1}], got {timesteps.tolist()}")
    if num_steps < 1:
        raise PixprefError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 <= eta <= 1.0:
        raise PixprefError(f"eta must be in [0, 1], got {eta}")

    def bcast(v: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, 1, 1, 1)
        return v.view(-1, *([1] * (x0.ndim - 1)))

    timesteps = timesteps.to(x0.device).long()
    grid = inversion_grid(timesteps, num_steps)  # (B, N)
    work = torch.promote_types(
        x0.dtype, torch.float32
    )  # the update runs in >= float32; eps_fn sees x0's dtype
    x = x0.to(work)
    abar_cur = torch.ones(x0.shape[0], dtype=work, device=x0.device)  # clean start: abar = 1
    level_cur = torch.full_like(timesteps, -1)
    for k in range(num_steps):
        level_next = grid[:, k]  # (B,)
        active = level_next != level_cur  # (B,) steps with two equal levels are skipped
        abar_next = abar_table[level_next].to(work)
        eps = eps_fn(x.to(x0.dtype), level_next).to(work)  # evaluated at the destination timestep
        x0_hat = (x - bcast((1 - abar_cur).sqrt()) * eps) / bcast(abar_cur.sqrt())
        sigma = eta * ((1 - abar_cur) / (1 - abar_next) * (1 - abar_next / abar_cur)).clamp(min=0).sqrt()
        x_next = (
            bcast(abar_next.sqrt()) * x0_hat + bcast((1 - abar_next - sigma**2).clamp(min=0).sqrt()) * eps
        )
        if eta > 0:
            noise = torch.randn(
                x.shape, generator=generator, device=x.device if generator is None else generator.device
            )
            x_next = x_next + bcast(sigma) * noise.to(x.device, work)
        x = torch.where(bcast(active), x_next, x)
        abar_cur = torch.where(active, abar_next, abar_cur)
        level_cur = level_next

    abar_t = bcast(abar_table[timesteps].to(work))
    eps_star = (x - abar_t.sqrt() * x0.to(work)) / (1 - abar_t).sqrt()
    return x.to(x0.dtype), eps_star.to(x0.dtype)
