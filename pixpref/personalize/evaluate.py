"""Measure personalization in the toy world, where every user's true utility is known.

For each unseen user: k of their pairs -> user embedding -> personalized images for a fixed set of prompts
and initial noises; the base model's images from the *same* noises are the baseline. The judge is the
user's exact utility of the oracle's pixel measurements. Reported: win rate (ties count half) with a 95%
Wilson interval, prompt adherence of both, and, on request, the few-shot curve and interpolation curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pixpref.errors import PixprefError


def wilson(wins: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (wins may be fractional: ties count half)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = wins / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@torch.no_grad()
def generate(pipe: Any, adapter: Any, prompt: str, latents: torch.Tensor, users: torch.Tensor | None,
             scale: float | None = None, steps: int = 20, guidance: float = 2.0,
             user_guidance: str = "text", user_window: tuple[float | None, float | None] = (None, None)) -> np.ndarray:
    """Images for ``prompt`` from fixed initial ``latents`` (n, C, H, W).

    ``scale``: weight of the user branch; None: the adapter's saved ``scale``.
    ``user_window``: (start, end) fractions of the denoising steps that use the user branch
    (:meth:`UserAdapter.step_window`); None: the adapter's saved ``start`` / ``end``.

    users: (G, T, D) embeddings -> (G, n, H, W, 3) uint8, every user from the same n noises;
    None -> the base model, (1, n, H, W, 3).
    """
    n = latents.shape[0]
    g = 1 if users is None else users.shape[0]
    lat = latents.repeat(g, 1, 1, 1)  # (G*n, C, H, W), user-major
    kwargs, callback = None, None
    if users is not None and scale is None:
        scale = adapter.config.scale
    if users is not None and scale != 0.0:
        tokens = adapter.encode(users.to(pipe.unet.device, torch.float32)).repeat_interleave(n, dim=0)  # (G*n, T, C)
        kwargs = adapter.guided_kwargs(tokens, guidance > 1.0, scale=scale, user_guidance=user_guidance)
        start = adapter.config.start if user_window[0] is None else user_window[0]
        end = adapter.config.end if user_window[1] is None else user_window[1]
        callback = adapter.step_window(kwargs, steps, start, end)
    extra = {} if callback is None else {"callback_on_step_end": callback}
    images = pipe(prompt, num_images_per_prompt=g * n, num_inference_steps=steps, guidance_scale=guidance,
                  latents=lat.clone(), cross_attention_kwargs=kwargs, output_type="np", **extra).images
    images = (np.asarray(images) * 255 + 0.5).clip(0, 255).astype(np.uint8)
    return images.reshape(g, n, *images.shape[1:])


@dataclass
class EvalSetup:
    prompts: list[str]
    seeds: int = 4  # images per prompt
    steps: int = 20
    guidance: float = 2.0
    noise_seed: int = 1234
    user_scale: float | None = None  # weight of the user branch (None: each adapter's saved scale)
    user_guidance: str = "text"  # see pixpref.personalize.names.USER_GUIDANCE_MODES
    user_start: float | None = None  # fraction of the denoising steps before the user branch starts
    user_end: float | None = None  # ... and at which it stops (None: each adapter's saved window)

    def latents(self, pipe: Any, prompt_index: int) -> torch.Tensor:
        size = pipe.unet.config.sample_size
        gen = torch.Generator().manual_seed(self.noise_seed + prompt_index)
        return torch.randn(self.seeds, pipe.unet.config.in_channels, size, size, generator=gen)


@dataclass
class WinResult:
    win_rate: float
    ci: tuple[float, float]
    comparisons: int
    per_user: dict[str, float] = field(default_factory=dict)
    adherence_base: float = float("nan")
    adherence_personal: float = float("nan")
    mean_utility_gain: float = float("nan")

    def to_dict(self) -> dict:
        return {"win_rate": self.win_rate, "ci95": list(self.ci), "comparisons": self.comparisons,
                "adherence_base": self.adherence_base, "adherence_personal": self.adherence_personal,
                "mean_utility_gain": self.mean_utility_gain, "per_user": self.per_user}


def base_images(pipe: Any, setup: EvalSetup) -> np.ndarray:
    """(P, n, H, W, 3) base images for every eval prompt."""
    return np.stack([generate(pipe, None, p, setup.latents(pipe, i), None, steps=setup.steps,
                              guidance=setup.guidance)[0] for i, p in enumerate(setup.prompts)])


def personalized_images(pipe: Any, adapter: Any, setup: EvalSetup, embeddings: torch.Tensor,
                        group: int = 8) -> np.ndarray:
    """(U, P, n, H, W, 3) images for U user embeddings (U, T, D)."""
    per_prompt = []
    for i, p in enumerate(setup.prompts):
        lat = setup.latents(pipe, i)
        chunks = [generate(pipe, adapter, p, lat, embeddings[s:s + group], setup.user_scale, setup.steps,
                           setup.guidance, setup.user_guidance, (setup.user_start, setup.user_end))
                  for s in range(0, embeddings.shape[0], group)]
        per_prompt.append(np.concatenate(chunks))  # (U, n, H, W, 3)
    return np.stack(per_prompt, axis=1)


def utilities(users: list[Any], personal: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each user's true utility of their personalized (U, P, n, ...) and of the base (P, n, ...) images.

    Returns two (U, P*n) float arrays: row i is user i judging their own images and the base images.
    """
    from pixpref.toyworld.oracle import measure

    if personal.shape[0] != len(users):
        raise PixprefError(f"{personal.shape[0]} image sets for {len(users)} users")
    u_, p_, n_ = personal.shape[:3]
    img_shape = personal.shape[3:]
    feats_base = measure(base.reshape(-1, *img_shape))
    feats_pers = measure(personal.reshape(-1, *img_shape))
    util_pers = np.empty((u_, p_ * n_))
    util_base = np.empty((u_, p_ * n_))
    for i, user in enumerate(users):
        util_base[i] = user.utility(feats_base)
        sl = slice(i * p_ * n_, (i + 1) * p_ * n_)
        util_pers[i] = user.utility({k: v[sl] for k, v in feats_pers.items()})
    return util_pers, util_base


def win_rate(users: list[Any], personal: np.ndarray, base: np.ndarray, prompts: list[str]) -> WinResult:
    """Judge personalized (U, P, n, ...) against base (P, n, ...) images with each user's true utility."""
    from pixpref.toyworld.oracle import prompt_adherence

    u_, p_, n_ = personal.shape[:3]
    img_shape = personal.shape[3:]
    util_pers, util_base = utilities(users, personal, base)  # (U, P*n) each
    wins, total, gains, per_user = 0.0, 0, [], {}
    for i, user in enumerate(users):
        up, ub = util_pers[i], util_base[i]
        w = float((up > ub).sum() + 0.5 * (up == ub).sum())
        per_user[str(user.id)] = w / len(ub)
        wins += w
        total += len(ub)
        gains.append(float(np.mean(up - ub)))
    prompts_rep = [p for p in prompts for _ in range(n_)]
    adh_base = float(prompt_adherence(base.reshape(-1, *img_shape), prompts_rep).mean())
    adh_pers = float(prompt_adherence(personal.reshape(-1, *img_shape), prompts_rep * u_).mean())
    return WinResult(wins / total, wilson(wins, total), total, per_user, adh_base, adh_pers, float(np.mean(gains)))


def interpolation_curve(pipe: Any, adapter: Any, setup: EvalSetup, user_a: Any, user_b: Any, emb_a: torch.Tensor,
                        emb_b: torch.Tensor, alphas=(0.0, 0.25, 0.5, 0.75, 1.0)) -> dict[str, list[float]]:
    """Mean utility of each user's images along (1 - a) * emb_a + a * emb_b."""
    from pixpref.personalize.pipeline import interpolate_users
    from pixpref.toyworld.oracle import measure

    embs = torch.stack([interpolate_users(emb_a, emb_b, float(a)) for a in alphas])
    images = personalized_images(pipe, adapter, setup, embs)  # (A, P, n, ...)
    per_image_a, per_image_b = [], []  # (A, P*n): the same noises at every alpha
    for row in images:
        feats = measure(row.reshape(-1, *row.shape[2:]))
        per_image_a.append(user_a.utility(feats))
        per_image_b.append(user_b.utility(feats))
    ua, ub = np.stack(per_image_a), np.stack(per_image_b)
    return {"alpha": [float(a) for a in alphas], "utility_a": ua.mean(axis=1).tolist(),
            "utility_b": ub.mean(axis=1).tolist(), "step_se_a": paired_step_se(ua), "step_se_b": paired_step_se(ub)}


def paired_step_se(per_image: np.ndarray) -> list[float]:
    """Standard error of each step's mean change along a curve, paired over its images.

    ``per_image``: ``(A, N)`` one user's utility of N images (the same noises) at each of A points;
    returns ``A - 1`` values, the standard error of mean(u[i + 1] - u[i]).
    """
    u = np.asarray(per_image, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] < 2:
        raise PixprefError(f"paired_step_se needs (points, images>=2) utilities, got shape {u.shape}")
    d = np.diff(u, axis=0)  # (A-1, N)
    return (d.std(axis=1, ddof=1) / np.sqrt(u.shape[1])).tolist()


def taste_correlations(utilities: np.ndarray) -> np.ndarray:
    """``(U, U)`` Pearson correlations of users' utilities ``(U, N)`` of the same images (0 for a constant row)."""
    centred = np.asarray(utilities, dtype=np.float64)
    centred = centred - centred.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = centred / np.where(norm > 0, norm, 1.0)
    return unit @ unit.T


def opposed_pairs(utilities: np.ndarray, count: int) -> list[tuple[int, int]]:
    """``count`` disjoint user pairs whose tastes conflict most on the same images, for interpolation curves.

    ``utilities``: ``(U, N)`` each user's utility of the same N images (e.g. the base model's). Pairs are taken
    greedily by the most negative Pearson correlation between two users' utilities: interpolating between users
    who rank the images alike cannot move either one's utility much, so a flat curve there says nothing.
    """
    u = np.asarray(utilities, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] < 2:
        raise PixprefError(f"opposed_pairs needs (users, images>=2) utilities, got shape {u.shape}")
    if not 0 <= 2 * count <= u.shape[0]:
        raise PixprefError(f"opposed_pairs: {count} pairs need {2 * count} users, got {u.shape[0]}")
    if not np.isfinite(u).all():
        raise PixprefError("opposed_pairs: utilities hold NaN or inf")
    corr = taste_correlations(u)
    corr[np.arange(len(u)), np.arange(len(u))] = np.inf
    pairs: list[tuple[int, int]] = []
    for _ in range(count):
        i, j = np.unravel_index(int(np.argmin(corr)), corr.shape)
        pairs.append((int(min(i, j)), int(max(i, j))))
        corr[[i, j], :] = np.inf
        corr[:, [i, j]] = np.inf
    return pairs


def interpolation_user_pairs(config: Any, base_utilities: np.ndarray) -> list[tuple[int, int]]:
    """Indices of the user pairs an evaluation interpolates between (``config.interpolation_pairing``)."""
    if config.interpolation_pairing == "index":
        return [(2 * j, 2 * j + 1) for j in range(config.interpolation_pairs)]
    return opposed_pairs(base_utilities, config.interpolation_pairs)


NOISE_Z = 1.96  # a wrong-way step counts against "monotone within noise" only beyond this many standard errors


def interpolation_summary(curves: list[dict]) -> dict[str, float | int]:
    """How monotone interpolation curves are: moving from user a's embedding to user b's, user a's utility
    should fall and user b's rise. Per user (two per curve): ``monotone`` share whose utility never moves
    the wrong way between neighbouring alphas; ``right_direction`` share whose end-to-end change has the
    right sign; ``mean_change`` the mean end-to-end change in the right direction (a's fall, b's rise).
    Curves with paired step standard errors (``step_se_a/b``, :func:`paired_step_se`) add
    ``monotone_within_noise``: the share with no step significantly the wrong way (beyond ``NOISE_Z`` SE)."""
    changes, monotone, within_noise = [], [], []
    for c in curves:
        for side, sign in (("a", -1.0), ("b", 1.0)):
            utility = np.asarray(c[f"utility_{side}"])
            steps = sign * np.diff(utility)
            monotone.append(bool((steps >= 0).all()))
            changes.append(float(sign * (utility[-1] - utility[0])))
            if f"step_se_{side}" in c:
                within_noise.append(bool((steps >= -NOISE_Z * np.asarray(c[f"step_se_{side}"])).all()))
    if not changes:
        return {"users": 0}
    summary = {"users": len(changes), "monotone": float(np.mean(monotone)),
               "right_direction": float(np.mean(np.asarray(changes) > 0)), "mean_change": float(np.mean(changes))}
    if len(within_noise) == len(changes):
        summary["monotone_within_noise"] = float(np.mean(within_noise))
    return summary
