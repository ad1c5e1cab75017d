"""Toy-world preference data in the Pick-a-Pic v2 layout.

For each synthetic user and each pair: a content prompt (shape and colour from the chosen combination
split, one of the prompt templates), two images of that prompt that differ only in style, and the user's
Bradley-Terry choice between them (0.5 / 0.5 when the utilities are within ``tie_margin``). Images are
rendered from random scenes by default; pass ``image_source(prompt, n, rng) -> (n, H, W, 3) uint8`` to
label a generative model's samples instead.

Output folder (:func:`write_pairs`)::

    train-00000-of-00002.parquet ...   pairs of the training users (Pick-a-Pic columns)
    unseen-00000-of-00001.parquet      pairs of the held-out users
    users.json                         the population (see pixpref.toyworld.users)
    manifest.json                      settings, counts, tie and label rates

Everything is reproducible from the seed: a user's pairs depend only on (seed, user id).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pixpref.errors import PixprefError
from pixpref.toyworld.scene import PROMPT_TEMPLATES, content_combos, sample_scene
from pixpref.toyworld.users import User, save_users

ImageSource = Callable[[str, int, np.random.Generator], np.ndarray]
RENDER_MODEL = "toyworld-render"
_EPOCH = dt.datetime(2026, 1, 1)
_OUTPUT_PATTERNS = ("*.parquet", "users.json", "manifest.json")


def plan_prompts(user: User, pairs_per_user: int, seed: int, combos: str = "seen") -> list[str]:
    """The prompts of a user's pairs (drawn from their own stream, before any image)."""
    pool = content_combos(combos)
    rng = np.random.default_rng([seed, user.id, 0])
    out = []
    for _ in range(pairs_per_user):
        colour, shape = pool[rng.integers(len(pool))]
        template = PROMPT_TEMPLATES[rng.integers(len(PROMPT_TEMPLATES))]
        out.append(template.format(colour=colour, shape=shape))
    return out


def _render_source(image_size: int) -> ImageSource:
    from pixpref.toyworld.oracle import parse_prompt
    from pixpref.toyworld.render import render

    def source(prompt: str, n: int, rng: np.random.Generator) -> np.ndarray:
        colour, shape = parse_prompt(prompt)
        return np.stack([render(sample_scene(rng, shape=shape, colour=colour), image_size) for _ in range(n)])

    return source


def _check_images(images: Any, n: int, prompt: str) -> np.ndarray:
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != n or arr.shape[-1] != 3:
        raise PixprefError(f"image source returned {arr.dtype} {arr.shape} for {prompt!r}; "
                           f"expected uint8 ({n}, H, W, 3)")
    return arr


def iter_user_rows(user: User, pairs_per_user: int, seed: int, *, image_size: int = 32,
                   tie_margin: float = 0.05, combos: str = "seen", image_source: ImageSource | None = None,
                   model_name: str | None = None, prompt_counts: Counter | None = None,
                   first_ranking_id: int = 0, candidates: int = 1) -> Iterator[dict[str, Any]]:
    """Pick-a-Pic rows (dicts; images as uint8 arrays) for one user's ``pairs_per_user`` pairs.

    ``candidates`` > 1: each pair is the most different (in the oracle's style basis, standardised) of
    that many candidate pairs of the prompt, so a choice says more about the user; 1 = two random images.
    """
    from pixpref.toyworld.oracle import measure

    if candidates < 1:
        raise PixprefError(f"candidates must be >= 1, got {candidates}")
    prompts = plan_prompts(user, pairs_per_user, seed, combos)
    source = image_source or _render_source(image_size)
    model = model_name or (RENDER_MODEL if image_source is None else getattr(image_source, "__name__", "model"))
    rng = np.random.default_rng([seed, user.id, 1])
    if candidates == 1:
        images = np.stack([_check_images(source(p, 2, rng), 2, p) for p in prompts])  # (M, 2, H, W, 3)
    else:
        images = np.stack([_most_different_pair(_check_images(source(p, 2 * candidates, rng), 2 * candidates, p))
                           for p in prompts])
    m, _, h, w, _ = images.shape
    util = user.utility(measure(images.reshape(m * 2, h, w, 3))).reshape(m, 2)
    labels = user.choose(util[:, 0], util[:, 1], rng, tie_margin)
    for i, prompt in enumerate(prompts):
        rid = first_ranking_id + i
        yield {
            "caption": prompt, "jpg_0": images[i, 0], "jpg_1": images[i, 1],
            "label_0": float(labels[i]), "label_1": float(1.0 - labels[i]), "user_id": user.id,
            "ranking_id": rid, "created_at": _EPOCH + dt.timedelta(seconds=rid),
            "model_0": model, "model_1": model,
            "image_0_url": f"toyworld://u{user.id}/r{rid}/0", "image_1_url": f"toyworld://u{user.id}/r{rid}/1",
            "num_example_per_prompt": int(prompt_counts[prompt]) if prompt_counts else 1,
        }


def _most_different_pair(images: np.ndarray) -> np.ndarray:
    """(2N, H, W, 3) images -> the (2, H, W, 3) pair among N disjoint candidate pairs that differs most in
    the users' standardised style basis."""
    from pixpref.toyworld.oracle import measure
    from pixpref.toyworld.users import basis

    b = basis(measure(images))
    b = (b - b.mean(0)) / (b.std(0) + 1e-6)
    gaps = np.linalg.norm(b[0::2] - b[1::2], axis=1)  # (N,)
    i = int(np.argmax(gaps))
    return images[2 * i: 2 * i + 2]


def _check_replaceable(out: Path) -> None:
    """Only replace a folder that holds nothing but a previous pairs output."""
    if not out.is_dir():
        raise PixprefError(f"output {out} exists and is not a folder")
    ours = {p for pat in _OUTPUT_PATTERNS for p in out.glob(pat)}
    others = [p.name for p in out.iterdir() if p not in ours]
    if others:
        raise PixprefError(f"refusing to replace {out}: it holds files that are not toy-world pairs output "
                           f"({', '.join(sorted(others)[:5])})")


def write_pairs(out_dir: str | Path, users: Sequence[User], pairs_per_user: int, seed: int, *,
                image_size: int = 32, tie_margin: float = 0.05, combos: str = "seen",
                shard_rows: int = 20000, image_source: ImageSource | None = None,
                model_name: str | None = None, overwrite: bool = False, candidates: int = 1,
                population: str | None = None, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write the users' pairs to ``out_dir`` (see the module docstring); returns the manifest.

    The folder appears complete or not at all: it is built under a temporary name and renamed.
    """
    from pixpref.data.pickapic import PickapicWriter

    if pairs_per_user < 1:
        raise PixprefError(f"pairs_per_user must be >= 1, got {pairs_per_user}")
    if shard_rows < 1:
        raise PixprefError(f"shard_rows must be >= 1, got {shard_rows}")
    if tie_margin < 0:
        raise PixprefError(f"tie_margin must be >= 0, got {tie_margin}")
    if candidates < 1:
        raise PixprefError(f"candidates must be >= 1, got {candidates}")
    content_combos(combos)  # validates the name
    out = Path(out_dir)
    if out.exists():
        if not overwrite:
            raise PixprefError(f"output {out} already exists; pass --overwrite to replace it")
        _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())
    counts = Counter(p for u in users for p in plan_prompts(u, pairs_per_user, seed, combos))
    stats: dict[str, Any] = {"rows": 0, "ties": 0, "label_0_wins": 0, "files": {}}
    try:
        next_id, done = 0, 0
        for split in ("train", "unseen"):
            group = [u for u in users if u.split == split]
            if not group:
                continue
            n_shards = math.ceil(len(group) * pairs_per_user / shard_rows)
            writer, shard, in_shard = None, 0, 0
            try:
                for user in group:
                    for row in iter_user_rows(user, pairs_per_user, seed, image_size=image_size,
                                              tie_margin=tie_margin, combos=combos, image_source=image_source,
                                              candidates=candidates,
                                              model_name=model_name, prompt_counts=counts,
                                              first_ranking_id=next_id):
                        if writer is None:
                            name = f"{split}-{shard:05d}-of-{n_shards:05d}.parquet"
                            writer = PickapicWriter(tmp / name).__enter__()
                        writer.write(row)
                        stats["ties"] += row["label_0"] == 0.5
                        stats["label_0_wins"] += row["label_0"] == 1.0
                        in_shard += 1
                        if in_shard == shard_rows:
                            writer.__exit__(None, None, None)
                            stats["files"][writer.path.name] = writer.rows_written
                            writer, shard, in_shard = None, shard + 1, 0
                    next_id += pairs_per_user
                    done += 1
                    if progress:
                        progress(done, len(users))
                if writer is not None:
                    writer.__exit__(None, None, None)
                    stats["files"][writer.path.name] = writer.rows_written
            except BaseException as e:  # close the open shard (its temp file is removed), then re-raise
                if writer is not None:
                    writer.__exit__(type(e), e, e.__traceback__)
                raise
        stats["rows"] = next_id
        manifest = {
            "seed": seed, "users": len(users), "pairs_per_user": pairs_per_user, "image_size": image_size,
            "tie_margin": tie_margin, "combos": combos, "shard_rows": shard_rows, "candidates": candidates,
            "image_source": model_name or (RENDER_MODEL if image_source is None else "custom"),
            "tie_rate": stats["ties"] / max(1, next_id), "label_0_win_rate": stats["label_0_wins"] / max(1, next_id),
            "files": stats["files"], "population": population,
        }
        save_users(users, tmp / "users.json", meta={"seed": seed, "population": population})
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if out.exists():  # overwrite: swap the old folder out only once the new one is complete
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
