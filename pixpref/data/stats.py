"""Summary statistics of a preference data set: pairs, users, ties, pairs per user, skipped rows.

Reads only metadata columns by default (fast even on the full Pick-a-Pic set); ``check_images=True``
also decodes every image and counts undecodable ones as ``corrupt_image``.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from pixpref.data.pairs import DataConfig, ReadStats, detect_format, iter_meta, iter_pairs


def dataset_stats(path: str | Path, fmt: str = "auto", tie_policy: str = "soft", check_images: bool = False,
                  batch_rows: int = 4096, k: int | None = None) -> dict[str, Any]:
    """One JSON-able summary of the data at ``path``.

    ``tie_policy="soft"`` (the default here) keeps ties so they are counted under ``ties``; with ``drop``
    they appear under ``skipped.tie_dropped`` instead. With ``k``, also counts users that have at least
    ``k`` pairs (i.e. can form a few-shot chunk).
    """
    fmt = detect_format(path) if fmt == "auto" else fmt
    stats = ReadStats()
    per_user: Counter = Counter()
    ties = 0
    if check_images:
        cfg = DataConfig(path=str(path), format=fmt, tie_policy=tie_policy,
                         batch_rows=min(batch_rows, 1024))
        for pair in iter_pairs(cfg, stats=stats, decode_images=True):
            per_user[pair.user_id] += 1
            ties += pair.label == 0.5
    else:
        for meta in iter_meta(path, fmt, tie_policy=tie_policy, batch_rows=batch_rows, stats=stats):
            per_user[meta.user_id] += 1
            ties += meta.label == 0.5
    counts = sorted(per_user.values())
    out: dict[str, Any] = {
        "path": str(path),
        "format": fmt,
        "tie_policy": tie_policy,
        "images_checked": check_images,
        "rows": stats.rows_read,
        "pairs": stats.pairs,
        "users": len(per_user),
        "ties": int(ties),
        "pairs_per_user": {
            "min": counts[0] if counts else 0,
            "median": float(statistics.median(counts)) if counts else 0.0,
            "max": counts[-1] if counts else 0,
        },
        "skipped": dict(sorted(stats.skipped.items())),
        "skipped_total": int(sum(stats.skipped.values())),
        "files": stats.files,
    }
    if k is not None:
        out["users_with_at_least_k"] = {"k": k, "users": sum(c >= k for c in counts)}
    return out
