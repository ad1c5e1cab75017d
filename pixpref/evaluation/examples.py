"""Unseen users of a toy data folder and the k preference pairs each one shows the user encoder.

    users = unseen_users(data_dir, 20)
    pairs = unseen_pairs(data_dir, users)                 # user id -> every (non-tie) pair
    examples = few_shot_examples(pairs, k=4)              # user id -> k (prompt, chosen, rejected)

A user's examples for k=2 are the first two of their examples for k=4 (one seeded shuffle per user), so the
few-shot curve adds examples rather than swapping them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pixpref.errors import PixprefError


def unseen_users(data_dir: str | Path, count: int, offset: int = 0) -> list[Any]:
    """``count`` users of ``users.json`` whose split is ``unseen``, skipping the first ``offset`` of them.

    The offset keeps tuning off the reported users: e.g. choose a setting on ``offset=20`` and report ``offset=0``.
    """
    from pixpref.toyworld.users import load_users

    if offset < 0:
        raise PixprefError(f"user offset must be >= 0, got {offset}")
    users = [u for u in load_users(Path(data_dir) / "users.json").users if u.split == "unseen"]
    if len(users) < offset + count:
        raise PixprefError(f"{data_dir} has {len(users)} unseen users, fewer than user_offset + users = "
                           f"{offset} + {count}; lower them or make more data (pixpref toyworld make-pairs --users N)")
    return users[offset:offset + count]


def unseen_pairs(data_dir: str | Path, users: list[Any]) -> dict[str, list]:
    """user id -> that user's pairs from ``unseen-*.parquet`` (ties dropped), in file order."""
    from pixpref.data.pickapic import iter_pickapic

    wanted = {str(u.id) for u in users}
    pairs: dict[str, list] = {u: [] for u in wanted}
    for f in sorted(Path(data_dir).glob("unseen-*.parquet")):
        for p in iter_pickapic(f, tie_policy="drop"):
            if p.user_id in wanted:
                pairs[p.user_id].append(p)
    return pairs


def few_shot_examples(pairs: dict[str, list], k: int, seed: int = 0) -> dict[str, list]:
    """user id -> k (prompt, chosen, rejected) examples (PixprefError if a user has fewer than k pairs)."""
    from pixpref.data.fewshot import user_chunks

    out = {}
    for uid, ps in pairs.items():
        chunk = user_chunks(uid, list(range(len(ps))), k=k, max_chunks=1, seed=seed)[0]
        out[uid] = [(ps[i].prompt, ps[i].chosen, ps[i].rejected) for i in chunk.indices]
    return out


def user_examples(data_dir: str | Path, users: list[Any], k: int, seed: int = 0) -> dict[str, list]:
    """user id -> k (prompt, chosen, rejected) examples from the unseen users' parquet (ties skipped)."""
    return few_shot_examples(unseen_pairs(data_dir, users), k, seed)
