"""User embeddings on disk: one user's profile (``USER.safetensors``) and the training cache.

A profile file holds ``user_embedding`` (T, D) float32 and string metadata (the VLM it came from, the
pooling, how many examples). The training cache holds one embedding per (user, example chunk) so the
VLM runs once per chunk, not per training step:

    cache = precompute_cache(encoder, chunks, "cache/user_emb.safetensors")
    emb = cache.get(user_id, chunk_id)          # (T, D)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from tqdm.auto import tqdm

from pixpref.errors import PixprefError
from pixpref.io_utils import atomic_path, read_json

PROFILE_KEY = "user_embedding"
USER_ENCODER_SPEC = "user_encoder.json"  # beside an adapter: which embeddings it was trained on


def check_embedding(emb: torch.Tensor, expected_dim: int | None = None, where: str = "user embedding") -> torch.Tensor:
    """Validate a (T, D) or (B, T, D) embedding: finite, right rank, right width."""
    if not isinstance(emb, torch.Tensor):
        raise PixprefError(f"{where}: expected a tensor, got {type(emb).__name__}")
    if emb.ndim not in (2, 3) or emb.shape[-2] == 0:
        raise PixprefError(f"{where}: expected shape (T, D) or (B, T, D) with T >= 1, got {tuple(emb.shape)}")
    if not torch.isfinite(emb).all():
        raise PixprefError(f"{where}: contains NaN or inf values")
    if expected_dim is not None and emb.shape[-1] != expected_dim:
        raise PixprefError(
            f"{where}: width {emb.shape[-1]} does not match the model's user-embedding width {expected_dim} "
            "(was it made with another VLM?)"
        )
    return emb


def save_user_embedding(path: str | Path, emb: torch.Tensor, metadata: dict[str, Any] | None = None) -> Path:
    """Write a profile atomically: ``{"user_embedding": (T, D)}`` + string metadata."""
    emb = check_embedding(emb.detach().float().cpu().contiguous())
    if emb.ndim != 2:
        raise PixprefError(f"a profile holds one user: expected (T, D), got {tuple(emb.shape)}")
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()}
    meta.setdefault("format", "pixpref-user-embedding-v1")
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({PROFILE_KEY: emb}, str(tmp), metadata=meta)
    return path


def load_user_embedding(path: str | Path, expected_dim: int | None = None) -> tuple[torch.Tensor, dict[str, str]]:
    """Read a profile -> ((T, D) float32, metadata). Clear errors for missing/corrupt/other files."""
    path = Path(path)
    if not path.is_file():
        raise PixprefError(f"user embedding file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if PROFILE_KEY not in f.keys():
                raise PixprefError(
                    f"{path} is not a pixpref user profile: it has no {PROFILE_KEY!r} tensor (keys: {list(f.keys())})"
                )
            emb = f.get_tensor(PROFILE_KEY).float()
    except SafetensorError as e:
        raise PixprefError(f"{path} is not a readable safetensors file ({e})") from None
    return check_embedding(emb, expected_dim, where=str(path)), meta


class UserEmbeddingCache:
    """Embeddings per (user, chunk), loaded from one safetensors file (small enough for memory)."""

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
        self.tensors = tensors
        self.metadata = metadata or {}
        self._by_user: dict[str, list[str]] = {}
        for key in sorted(tensors):
            user, chunk = key.rsplit("/", 1)
            self._by_user.setdefault(user, []).append(chunk)

    @staticmethod
    def key(user_id: Any, chunk_id: Any) -> str:
        return f"{user_id}/{chunk_id}"

    @classmethod
    def load(cls, path: str | Path) -> UserEmbeddingCache:
        path = Path(path)
        if not path.is_file():
            raise PixprefError(f"user-embedding cache not found: {path}; run the precompute step first")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return cls(load_file(str(path)), meta)

    def users(self) -> list[str]:
        return list(self._by_user)

    def chunks_for(self, user_id: Any) -> list[str]:
        return list(self._by_user.get(str(user_id), []))

    def get(self, user_id: Any, chunk_id: Any) -> torch.Tensor:
        key = self.key(user_id, chunk_id)
        if key not in self.tensors:
            raise PixprefError(f"no cached embedding for user {user_id!r} chunk {chunk_id!r}")
        return self.tensors[key]

    @property
    def shape(self) -> tuple[int, int]:
        first = next(iter(self.tensors.values()))
        return tuple(first.shape)


def precompute_cache(
    encoder: Any,
    chunks: Iterable[tuple[Any, Any, Sequence[Any]]],
    out_path: str | Path,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    accelerator: Any = None,
) -> UserEmbeddingCache:
    """Run the VLM once per (user_id, chunk_id, pairs) and write the cache atomically.

    With an ``accelerate.Accelerator`` the chunks are split between processes; each writes a shard and
    the main process merges them.
    """
    chunks = list(chunks)
    if not chunks:
        raise PixprefError("no example chunks to encode (every user had fewer pairs than k?)")
    out_path = Path(out_path)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = chunks[rank::world]
    tensors: dict[str, torch.Tensor] = {}
    bs = encoder.config.batch_size
    for start in tqdm(range(0, len(mine), bs), desc="user embeddings", disable=not progress or rank != 0):
        batch = mine[start:start + bs]
        emb = encoder.encode([pairs for _, _, pairs in batch])
        for (uid, cid, _), e in zip(batch, emb):
            tensors[UserEmbeddingCache.key(uid, cid)] = e.contiguous()
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()}
    if world == 1:
        with atomic_path(out_path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return UserEmbeddingCache(tensors, meta)
    shard = out_path.with_name(f"{out_path.name}.shard{rank}")
    with atomic_path(shard) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        merged: dict[str, torch.Tensor] = {}
        for r in range(world):
            part = out_path.with_name(f"{out_path.name}.shard{r}")
            merged.update(load_file(str(part)))
        with atomic_path(out_path) as tmp:
            save_file(merged, str(tmp), metadata=meta)
        for r in range(world):
            out_path.with_name(f"{out_path.name}.shard{r}").unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return UserEmbeddingCache.load(out_path)


def write_user_encoder_spec(directory: str | Path, user_cfg: Any) -> Path:
    """Record beside an adapter which user embeddings it reads (source, VLM, pooling)."""
    spec = {"source": user_cfg.source, "vlm": user_cfg.vlm, "pooling": user_cfg.pooling,
            "generate_tokens": user_cfg.generate_tokens}
    if user_cfg.pooling == "preference_head":
        spec["head"] = user_cfg.head
    path = Path(directory) / USER_ENCODER_SPEC
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(spec, indent=1) + "\n")
    return path


def read_user_encoder_spec(directory: str | Path) -> dict[str, Any]:
    """The spec written by :func:`write_user_encoder_spec`; PPD's defaults if the folder has none."""
    path = Path(directory) / USER_ENCODER_SPEC
    if not path.is_file():
        return {"source": "vlm", "vlm": "toy", "pooling": "last_token_all_layers", "generate_tokens": 0}
    return read_json(path)
