"""Training examples for personalized preference fine-tuning.

Each training pair of a user is conditioned on the embedding of a **different** chunk of the same user's
pairs (never the chunk that holds the pair itself), so the model cannot copy the answer from its context.
Batches are a pure function of ``(seed, step, rank)``: resuming at step s draws exactly what an
uninterrupted run draws at step s.

The pairs are decoded into memory (uint8), which suits the toy world and subsets of Pick-a-Pic; the
reader itself streams, so only the selected pairs are ever held.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pixpref.data.fewshot import FewShotChunk, make_chunks
from pixpref.data.pairs import DataConfig, PreferencePair, ReadStats, iter_pairs
from pixpref.errors import PixprefError


@dataclass
class PairArrays:
    """Decoded pairs: chosen/rejected (N, H, W, 3) uint8 and per-pair prompt, user, label, index."""

    chosen: np.ndarray
    rejected: np.ndarray
    prompts: list[str]
    users: list[str]
    labels: np.ndarray  # (N,) float32
    index: np.ndarray  # (N,) int64, the pair's index in its data set

    def __len__(self) -> int:
        return len(self.prompts)

    def pairs(self, rows) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(prompt, chosen, rejected) tuples, the user encoder's input."""
        return [(self.prompts[r], self.chosen[r], self.rejected[r]) for r in rows]


def load_pairs(cfg: DataConfig, users: set[str] | None = None, max_pairs: int | None = None,
               exclude_prompts: set[str] | None = None) -> tuple[PairArrays, ReadStats]:
    """Decode the pairs of ``cfg`` into memory: only those of ``users`` if given, none whose prompt is in
    ``exclude_prompts`` (the held-out-caption split)."""
    if cfg.image_size is None:
        raise PixprefError("data.image_size must be set for training (images are resized to it)")
    stats = ReadStats()
    chosen, rejected, prompts, uids, labels, index = [], [], [], [], [], []
    for pair in iter_pairs(cfg, stats=stats):
        if users is not None and pair.user_id not in users:
            continue
        if exclude_prompts and pair.prompt in exclude_prompts:
            continue
        chosen.append(_rgb(pair, "chosen", cfg.image_size))
        rejected.append(_rgb(pair, "rejected", cfg.image_size))
        prompts.append(pair.prompt)
        uids.append(pair.user_id)
        labels.append(pair.label)
        index.append(pair.index)
        if max_pairs is not None and len(prompts) >= max_pairs:
            break
    if not prompts:
        raise PixprefError(f"no usable pairs in {cfg.path} (skipped: {dict(stats.skipped) or 'none'})")
    arrays = PairArrays(np.stack(chosen), np.stack(rejected), prompts, uids,
                        np.asarray(labels, np.float32), np.asarray(index, np.int64))
    return arrays, stats


def _rgb(pair: PreferencePair, which: str, size: int) -> np.ndarray:
    img = pair.chosen if which == "chosen" else pair.rejected
    if isinstance(img, np.ndarray) and img.shape[:2] == (size, size):
        return img
    return pair.chosen_rgb(size) if which == "chosen" else pair.rejected_rgb(size)


@dataclass
class ContextPlan:
    """Few-shot chunks (rows into PairArrays) and, per training row, the chunks it may be conditioned on."""

    chunks: list[FewShotChunk]  # indices are ROWS of the PairArrays
    allowed: dict[int, list[int]]  # row -> positions in ``chunks`` (same user, not containing the row)
    skipped_users: dict[str, int]
    rows_without_context: int

    @property
    def rows(self) -> np.ndarray:
        return np.asarray(sorted(self.allowed), dtype=np.int64)


def plan_contexts(arrays: PairArrays, k: int, max_chunks_per_user: int, seed: int) -> ContextPlan:
    """Cut each user's rows into chunks of k and pick, for every row, the chunks that exclude it."""
    from pixpref.data.pairs import PairMeta

    metas = [PairMeta(index=row, user_id=u, prompt=p) for row, (u, p) in enumerate(zip(arrays.users, arrays.prompts))]
    result = make_chunks(metas, k=k, max_chunks_per_user=max_chunks_per_user, seed=seed)
    by_user: dict[str, list[int]] = {}
    for pos, chunk in enumerate(result.chunks):
        by_user.setdefault(chunk.user_id, []).append(pos)
    allowed: dict[int, list[int]] = {}
    missing = 0
    for row, user in enumerate(arrays.users):
        options = [pos for pos in by_user.get(user, []) if row not in result.chunks[pos].indices]
        if options:
            allowed[row] = options
        else:
            missing += 1
    if not allowed:
        raise PixprefError(
            f"no training pair has a context chunk: every user needs at least k={k} pairs besides the trained "
            "one (two chunks' worth); use more pairs per user or a smaller data.k"
        )
    return ContextPlan(result.chunks, allowed, result.skipped_users, missing)


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator for one (step, process): all randomness of a step comes from it."""
    return torch.Generator().manual_seed(((seed * 1_000_003) + step * 7919 + rank * 104_729) % (2**63 - 1))


def sample_batch(plan: ContextPlan, batch_size: int, generator: torch.Generator) -> tuple[np.ndarray, list[int]]:
    """Draw ``batch_size`` training rows and one allowed context chunk for each."""
    rows = plan.rows
    pick = torch.randint(0, len(rows), (batch_size,), generator=generator).numpy()
    chosen_rows = rows[pick]
    contexts = []
    for row in chosen_rows:
        options = plan.allowed[int(row)]
        contexts.append(options[int(torch.randint(0, len(options), (1,), generator=generator))])
    return chosen_rows, contexts
