"""Build the per-chunk user-embedding cache for training, from the VLM (PPD) or, in the toy world, from
each user's true utility weights (the upper bound of what any embedding could tell the model)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from pixpref.errors import PixprefError
from pixpref.personalize.embeddings import UserEmbeddingCache, precompute_cache


def oracle_embeddings(users_file: str | Path) -> dict[str, torch.Tensor]:
    """user id -> (1, W) true utility weights of the toy world's synthetic users."""
    from pixpref.toyworld.users import load_users

    if not users_file:
        raise PixprefError("user.source=oracle needs user.users_file (the toy world's users.json)")
    return {str(u.id): torch.as_tensor(u.weights_vector(), dtype=torch.float32)[None] for u in load_users(users_file).users}


def oracle_pair_embeddings(chunks: list, arrays: Any) -> dict[str, torch.Tensor]:
    """cache key -> (1, W) pixel-oracle contrast of each chunk's own pairs (toy world; see pair_contrast)."""
    from pixpref.toyworld.users import examples_contrast

    return {UserEmbeddingCache.key(c.user_id, c.chunk):
            torch.as_tensor(examples_contrast(arrays.pairs(c.indices)), dtype=torch.float32)[None].contiguous()
            for c in chunks}


def oracle_posterior_embeddings(chunks: list, arrays: Any, users_file: str | Path) -> dict[str, torch.Tensor]:
    """cache key -> (1, W) posterior mean weights of each chunk's pairs over the *other* training users."""
    from pixpref.toyworld.users import examples_posterior, load_users, training_prior

    if not users_file:
        raise PixprefError("user.source=oracle_posterior needs user.users_file (the toy world's users.json)")
    ids, weights, temps = training_prior(load_users(users_file).users)
    out = {}
    for c in chunks:
        keep = ids != str(c.user_id)  # leave the user out of its own prior (unseen users are not in it either)
        post = examples_posterior(arrays.pairs(c.indices), weights[keep], temps[keep])
        out[UserEmbeddingCache.key(c.user_id, c.chunk)] = torch.as_tensor(post, dtype=torch.float32)[None].contiguous()
    return out


@torch.no_grad()
def head_chunk_embeddings(encoder: Any, chunks: list, arrays: Any, progress: bool = True) -> dict[str, torch.Tensor]:
    """cache key -> (1, E) preference-head embedding of each chunk; the VLM reads every pair once (chunks of
    one user share pairs), which equals encoding each chunk alone."""
    from tqdm.auto import tqdm

    rows = sorted({int(r) for c in chunks for r in c.indices})
    step = 64 * encoder.config.batch_size
    readings = torch.cat([encoder.read_pairs(arrays.pairs(rows[s:s + step]))
                          for s in tqdm(range(0, len(rows), step), desc=f"VLM reads {len(rows)} pairs",
                                        disable=not progress)])
    evidence = encoder.head.evidence(readings[:, 0], readings[:, 1]).cpu()
    where = {r: i for i, r in enumerate(rows)}
    return {UserEmbeddingCache.key(c.user_id, c.chunk):
            encoder.head.cpu()(evidence[[where[int(r)] for r in c.indices]][None])[0].contiguous() for c in chunks}


def vlm_fingerprint(name_or_path: str | Path) -> str:
    """sha256 (16 hex digits) of a VLM folder's safetensors weights: a cache made by other weights under
    the same name (a retrained ``toy`` VLM) is stale."""
    from pixpref.models.vlm import resolve_vlm_path

    digest = hashlib.sha256()
    for f in sorted(resolve_vlm_path(name_or_path).glob("*.safetensors")):
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def cache_metadata(user_cfg: Any, arrays: Any, chunks: list) -> dict[str, str]:
    """What a cache was made from: the embedding source (for a VLM, a fingerprint of its weights) and a
    fingerprint of every chunk's pairs."""
    digest = hashlib.sha256()
    for c in chunks:
        pairs = [(int(arrays.index[r]), arrays.prompts[r]) for r in c.indices]
        digest.update(json.dumps([c.user_id, c.chunk, pairs]).encode())
    source = {"oracle": user_cfg.users_file, "oracle_pairs": "pixel-oracle",
              "oracle_posterior": f"pixel-oracle+{user_cfg.users_file}"}.get(user_cfg.source, user_cfg.vlm)
    meta = {"source": user_cfg.source, "vlm": str(source), "pooling": user_cfg.pooling,
            "generate_tokens": str(user_cfg.generate_tokens), "chunks": digest.hexdigest()}
    if user_cfg.source == "vlm":
        meta["vlm_weights"] = vlm_fingerprint(user_cfg.vlm)
        if user_cfg.pooling == "preference_head":
            from pixpref.personalize.preference_head import head_fingerprint

            meta["head"] = f"{user_cfg.head}:{head_fingerprint(user_cfg.head)}"
    return meta


def check_cache(cache: UserEmbeddingCache, user_cfg: Any, arrays: Any, chunks: list, path: Path) -> UserEmbeddingCache:
    """Refuse a cache made from another source, pooling or other pairs (it would silently mislead)."""
    expected = cache_metadata(user_cfg, arrays, chunks)
    differ = [k for k, v in expected.items() if cache.metadata.get(k) != v]
    if differ:
        raise PixprefError(
            f"user-embedding cache {path} was made with different {', '.join(differ)} than this config "
            f"(cache: { {k: cache.metadata.get(k) for k in differ} }); delete it, or set user.cache to another path"
        )
    return cache


def _write_cache(tensors: dict[str, torch.Tensor], meta: dict[str, str], path: Path) -> UserEmbeddingCache:
    from safetensors.torch import save_file

    from pixpref.io_utils import atomic_path

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return UserEmbeddingCache(tensors, meta)


def build_user_cache(user_cfg: Any, arrays: Any, chunks: list, path: Path, accelerator: Any = None) -> UserEmbeddingCache:
    """Encode every few-shot chunk once and write the cache to ``path`` (atomically)."""
    meta = cache_metadata(user_cfg, arrays, chunks)
    if user_cfg.source in ("oracle", "oracle_pairs", "oracle_posterior"):
        if accelerator is not None and not accelerator.is_main_process:
            return None
        if user_cfg.source == "oracle_pairs":
            tensors = oracle_pair_embeddings(chunks, arrays)
        elif user_cfg.source == "oracle_posterior":
            tensors = oracle_posterior_embeddings(chunks, arrays, user_cfg.users_file)
        else:
            weights = oracle_embeddings(user_cfg.users_file)
            missing = sorted({c.user_id for c in chunks} - set(weights))
            if missing:
                raise PixprefError(f"users {missing[:5]} have pairs but are not in {user_cfg.users_file}")
            tensors = {UserEmbeddingCache.key(c.user_id, c.chunk): weights[c.user_id].clone().contiguous()
                       for c in chunks}
        return _write_cache(tensors, meta, path)

    from pixpref.personalize.user_encoder import UserEncoder, UserEncoderConfig

    enc_cfg = UserEncoderConfig(vlm=user_cfg.vlm, pooling=user_cfg.pooling, head=user_cfg.head,
                                generate_tokens=user_cfg.generate_tokens,
                                max_pairs=max(8, max(len(c.indices) for c in chunks)),
                                batch_size=user_cfg.encode_batch_size)
    device = accelerator.device if accelerator is not None else "cpu"
    if user_cfg.pooling == "preference_head":  # per-pair readings: cheap, so the main process makes them all
        if accelerator is not None and not accelerator.is_main_process:
            return None
        encoder = UserEncoder.from_pretrained(user_cfg.vlm, enc_cfg, device=str(device))
        return _write_cache(head_chunk_embeddings(encoder, chunks, arrays), meta, path)
    encoder = UserEncoder.from_pretrained(user_cfg.vlm, enc_cfg, device=str(device))
    items = [(c.user_id, c.chunk, arrays.pairs(c.indices)) for c in chunks]
    return precompute_cache(encoder, items, path, meta, accelerator=accelerator if accelerator and accelerator.num_processes > 1 else None)
