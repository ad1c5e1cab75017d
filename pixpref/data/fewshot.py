"""Per-user few-shot grouping and user/prompt splits, on light pair metadata (no images).

PPD conditions on a user through a handful of their choices: each user's valid pairs are shuffled and
cut into disjoint chunks of ``k`` (default 4), at most ``max_chunks_per_user`` (PPD: 20) per user. Users
with fewer than ``k`` pairs cannot make a chunk: they are skipped and counted (or, when that one user is
asked for explicitly, an error names the user, their count and ``k``).

Everything is reproducible from a seed. Each user's shuffle is seeded by ``(seed, user_id)``, so adding
or removing other users never changes a user's chunks. Splits:

* users: a ``unseen_user_fraction`` of users is held out entirely (the unseen-user evaluation);
* prompts: a ``heldout_prompt_fraction`` of distinct prompts is held out from training.

``train`` = seen users x kept prompts; ``heldout_prompts`` = seen users x held-out prompts;
``unseen_users`` = every pair of the unseen users.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence

from pixpref.data.pairs import PairMeta
from pixpref.errors import PixprefError


@dataclasses.dataclass(frozen=True)
class FewShotChunk:
    """``k`` pair indices of one user (disjoint from that user's other chunks)."""

    user_id: str
    indices: tuple[int, ...]
    chunk: int  # 0-based chunk number within the user


@dataclasses.dataclass
class FewShotResult:
    chunks: list[FewShotChunk]
    skipped_users: dict[str, int]  # user -> their pair count (fewer than k)

    @property
    def users(self) -> list[str]:
        return sorted({c.user_id for c in self.chunks})


def group_by_user(metas: Iterable[PairMeta]) -> dict[str, list[int]]:
    """user id -> pair indices, in input order."""
    groups: dict[str, list[int]] = {}
    for m in metas:
        groups.setdefault(m.user_id, []).append(m.index)
    return groups


def _rng(seed: int, *parts: str) -> random.Random:
    # str seeds are hashed with SHA-512 by random.seed: independent of PYTHONHASHSEED
    return random.Random(":".join([str(seed), *parts]))


def user_chunks(user_id: str, indices: Sequence[int], k: int = 4, max_chunks: int = 20,
                seed: int = 0) -> list[FewShotChunk]:
    """Shuffle one user's pair indices (seeded) and cut them into disjoint chunks of ``k``."""
    if k < 1:
        raise PixprefError(f"k must be >= 1, got {k}")
    if len(set(indices)) != len(indices):
        raise PixprefError(f"user {user_id!r} has duplicate pair indices")
    if len(indices) < k:
        raise PixprefError(f"user {user_id!r} has {len(indices)} valid pair(s), fewer than k={k} needed "
                           "for one few-shot chunk; lower k or choose another user")
    order = sorted(indices)
    _rng(seed, "user", user_id).shuffle(order)
    n = min(len(order) // k, max_chunks)
    return [FewShotChunk(user_id, tuple(order[i * k:(i + 1) * k]), i) for i in range(n)]


def make_chunks(metas: Iterable[PairMeta], k: int = 4, max_chunks_per_user: int = 20, seed: int = 0,
                users: Sequence[str] | None = None) -> FewShotResult:
    """Few-shot chunks for every user (or only ``users``), sorted by user then chunk number.

    Users with fewer than ``k`` pairs are skipped and reported in ``skipped_users``; if ``users`` is given,
    an unknown user or one with too few pairs is an error instead.
    """
    if k < 1:
        raise PixprefError(f"k must be >= 1, got {k}")
    if max_chunks_per_user < 1:
        raise PixprefError(f"max_chunks_per_user must be >= 1, got {max_chunks_per_user}")
    groups = group_by_user(metas)
    if users is not None:
        wanted = [str(u) for u in users]
        unknown = [u for u in wanted if u not in groups]
        if unknown:
            known = sorted(groups)
            sample = ", ".join(known[:10]) + (f", ... ({len(known)} users)" if len(known) > 10 else "")
            raise PixprefError(f"unknown user(s) {', '.join(map(repr, unknown))}; users with valid pairs: {sample}")
        groups = {u: groups[u] for u in wanted}
    chunks: list[FewShotChunk] = []
    skipped: dict[str, int] = {}
    for user in sorted(groups):
        idx = groups[user]
        if len(idx) < k and users is None:
            skipped[user] = len(idx)
            continue
        chunks.extend(user_chunks(user, idx, k, max_chunks_per_user, seed))
    return FewShotResult(chunks=chunks, skipped_users=skipped)


def _split(items: Sequence[str], fraction: float, seed: int, what: str) -> set[str]:
    if not 0.0 <= fraction < 1.0:
        raise PixprefError(f"{what} fraction must be in [0, 1), got {fraction}")
    ordered = sorted(set(items))
    _rng(seed, what).shuffle(ordered)
    n = round(fraction * len(ordered))
    if fraction > 0 and n == 0 and len(ordered) > 1:
        n = 1
    return set(ordered[:n])


def split_users(user_ids: Iterable[str], unseen_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(seen, unseen) user lists, sorted; reproducible from ``seed``."""
    users = sorted(set(user_ids))
    unseen = _split(users, unseen_fraction, seed, "users")
    return [u for u in users if u not in unseen], sorted(unseen)


def split_prompts(prompts: Iterable[str], heldout_fraction: float, seed: int = 0) -> set[str]:
    """The set of held-out prompts; reproducible from ``seed``."""
    return _split(list(prompts), heldout_fraction, seed, "prompts")


@dataclasses.dataclass
class Splits:
    """Pair metadata per split, plus the users and prompts that define them."""

    train: list[PairMeta]
    heldout_prompts: list[PairMeta]
    unseen_users: list[PairMeta]
    unseen_user_ids: list[str]
    heldout_prompt_set: set[str]

    def summary(self) -> dict[str, int]:
        return {"train": len(self.train), "heldout_prompts": len(self.heldout_prompts),
                "unseen_users": len(self.unseen_users), "unseen_user_ids": len(self.unseen_user_ids),
                "heldout_prompt_set": len(self.heldout_prompt_set)}


def make_splits(metas: Iterable[PairMeta], unseen_user_fraction: float = 0.1,
                heldout_prompt_fraction: float = 0.05, seed: int = 0) -> Splits:
    """Split pairs by user and by prompt (see the module docstring); every pair lands in exactly one split."""
    metas = list(metas)
    _seen, unseen = split_users((m.user_id for m in metas), unseen_user_fraction, seed)
    unseen_set = set(unseen)
    held = split_prompts((m.prompt for m in metas), heldout_prompt_fraction, seed)
    train, held_pairs, unseen_pairs = [], [], []
    for m in metas:
        if m.user_id in unseen_set:
            unseen_pairs.append(m)
        elif m.prompt in held:
            held_pairs.append(m)
        else:
            train.append(m)
    return Splits(train, held_pairs, unseen_pairs, unseen, held)
