"""The two judges of personalized vs base images, and how often they agree.

* the oracle: each synthetic user's exact utility of the oracle's pixel measurements (toy world only);
* the scorer: a :class:`~pixpref.scorer.api.PreferenceScorer`, on its ``personal`` dimension (with the
  user's embedding) and on each text dimension.

Every comparison pairs one user's personalized image with the base image from the same prompt and noise,
so U users, P prompts and n images per prompt give U * P * n comparisons. Ties count half.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pixpref.personalize.evaluate import wilson


def paired_win_rate(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Win rate of scores ``a`` over ``b`` (same shape), 95% Wilson CI, and the mean difference."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    wins, ties = int((a > b).sum()), int((a == b).sum())
    n = int(a.size)
    score = wins + 0.5 * ties
    diff = a - b
    return {"win_rate": score / n, "ci95": list(wilson(score, n)), "n": n, "wins": wins, "ties": ties,
            "losses": n - wins - ties, "mean_delta": float(diff.mean()),
            "se_delta": float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0}


def agreement(delta_a: np.ndarray, delta_b: np.ndarray) -> dict[str, Any]:
    """Share of comparisons where two judges pick the same side (both personalized, both base, or both tie)."""
    same = np.sign(np.ravel(delta_a)) == np.sign(np.ravel(delta_b))
    n = int(same.size)
    return {"rate": float(same.mean()), "ci95": list(wilson(float(same.sum()), n)), "n": n}


def scorer_scores(scorer: Any, personal: np.ndarray, base: np.ndarray, prompts: list[str], users: Any,
                  dimensions: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Scores of personalized (U, P, n, H, W, 3) and base (P, n, H, W, 3) images -> two {dim: (U, P*n)}.

    ``users``: (U, T, D) embeddings for the ``personal`` dimension (each user judges their own and the base
    images); text dimensions score the base images once.
    """
    from pixpref.scorer.conditions import PERSONAL

    u_, p_, n_ = personal.shape[:3]
    flat_pers = personal.reshape(-1, *personal.shape[3:])  # (U*P*n, H, W, 3), user-major
    flat_base = base.reshape(-1, *base.shape[2:])  # (P*n, H, W, 3)
    prompts_rep = [p for p in prompts for _ in range(n_)]  # (P*n,)
    text = [d for d in dimensions if d != PERSONAL]
    pers_scores: dict[str, np.ndarray] = {}
    base_scores: dict[str, np.ndarray] = {}
    if text:
        sp = scorer.score(flat_pers, prompts_rep * u_, text, progress=False)
        sb = scorer.score(flat_base, prompts_rep, text, progress=False)
        for d in text:
            pers_scores[d] = sp[d].numpy().reshape(u_, p_ * n_)
            base_scores[d] = np.broadcast_to(sb[d].numpy(), (u_, p_ * n_))
    if PERSONAL in dimensions:
        per_image = users.float().repeat_interleave(p_ * n_, dim=0)  # (U*P*n, T, D)
        sp = scorer.score(flat_pers, prompts_rep * u_, [PERSONAL], user=per_image, progress=False)
        sb = scorer.score(np.tile(flat_base, (u_, 1, 1, 1)), prompts_rep * u_, [PERSONAL], user=per_image,
                          progress=False)
        pers_scores[PERSONAL] = sp[PERSONAL].numpy().reshape(u_, p_ * n_)
        base_scores[PERSONAL] = sb[PERSONAL].numpy().reshape(u_, p_ * n_)
    return pers_scores, base_scores


def judge(users: list[Any], personal: np.ndarray, base: np.ndarray, prompts: list[str], scorer: Any = None,
          scorer_users: Any = None) -> dict[str, Any]:
    """Oracle and scorer verdicts on one set of personalized images (see the module docstring)."""
    from pixpref.personalize.evaluate import utilities, win_rate
    from pixpref.scorer.conditions import PERSONAL

    oracle = win_rate(users, personal, base, prompts)
    util_pers, util_base = utilities(users, personal, base)  # (U, P*n)
    out: dict[str, Any] = {
        "oracle": {**paired_win_rate(util_pers, util_base), "per_user": oracle.per_user},
        "adherence": {"base": oracle.adherence_base, "personal": oracle.adherence_personal},
        "scorer": {},
        "agreement": {},
    }
    if scorer is None:
        return out
    pers, base_s = scorer_scores(scorer, personal, base, prompts, scorer_users, scorer.dimensions)
    oracle_delta = util_pers - util_base
    for dim in scorer.dimensions:
        result = paired_win_rate(pers[dim], base_s[dim])
        if dim == PERSONAL:
            result["per_user"] = {str(u.id): paired_win_rate(pers[dim][i], base_s[dim][i])["win_rate"]
                                  for i, u in enumerate(users)}
        out["scorer"][dim] = result
        out["agreement"][dim] = agreement(oracle_delta, pers[dim] - base_s[dim])
    return out
