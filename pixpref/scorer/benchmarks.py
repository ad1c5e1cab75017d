"""Scorer accuracy: on toy pairs (per dimension, against oracle labels) and on public test sets.

Public test sets, read in their published formats where the user has them (nothing is downloaded):

* **Pick-a-Pic v2** ``test_unique`` (parquet shards, pixpref.data.pickapic): one pair per row; a tie
  (label 0.5 / 0.5) counts half for any prediction, as in PickScore's evaluation.
* **HPD v2** test (``test.json`` + image folder): a list of ``{"prompt", "image_path": [...], "rank": [...]}``
  (rank 1 = best) or, instead of ``rank``, ``raw_annotations`` (several annotators' rank lists, averaged).
  Accuracy is HPS v2's: per prompt, the share of image pairs the scores order as the ranks do (pairs
  tied in the ranks are left out), averaged over prompts.

    acc = pickapic_accuracy(scorer, "pickapic_v2/test_unique", dimension="overall")
    acc = hpdv2_accuracy(scorer, "HPDv2/test.json", "HPDv2/test")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixpref.errors import PixprefError
from pixpref.io_utils import read_json
from pixpref.scorer.conditions import PERSONAL

# ------------------------------------------------------------------------------------------- toy pairs


def _pixels(model: Any, images: np.ndarray) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> model pixels (n, 3, S, S)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    return model.preprocess(x.to(model.logit_scale.device))


@torch.no_grad()
def plain_clip_model(model: Any) -> Any:
    """A scorer on the untouched backbone of ``model`` (its config's backbone and weights, a fresh head):
    with ``score_pairs(..., clip_baseline=True)`` it is the plain-CLIP baseline of the same backbone."""
    import dataclasses

    from pixpref.scorer.model import ScorerModel

    plain = ScorerModel.from_config(dataclasses.replace(model.config, zero_init=True))
    return plain.to(device=model.logit_scale.device).eval()


@torch.no_grad()
def score_pairs(model: Any, pairs: Any, dimensions: list[str], batch_size: int = 128,
                clip_baseline: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scores of images a and b of every pair per dimension -> {dim: ((N,), (N,))}.

    ``personal`` is scored only where a pair has a user context (NaN elsewhere). With ``clip_baseline``
    every dimension gets the same plain CLIP score instead: exp(logit_scale) * cos(image, prompt) of the
    scorer's backbone (no condition, no head).
    """
    was_training = model.training
    model.eval()
    n = len(pairs)
    out = {d: (np.full(n, np.nan), np.full(n, np.nan)) for d in dimensions}
    emb = torch.as_tensor(pairs.embeddings, dtype=torch.float32)
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        b = len(rows)
        pixels = _pixels(model, np.concatenate([pairs.images[rows, 0], pairs.images[rows, 1]]))
        ids = model.tokenize([pairs.prompts[i] for i in rows]).repeat(2, 1)
        feats = model.encode(pixels, ids)
        if clip_baseline:
            img = torch.nn.functional.normalize(feats["image"][:, 0].float(), dim=-1)
            txt = torch.nn.functional.normalize(feats["pooled"].float(), dim=-1)
            s = (model.clip.logit_scale.float().exp() * (img * txt).sum(-1)).cpu().numpy()
            for d in dimensions:
                out[d][0][rows], out[d][1][rows] = s[:b], s[b:]
            continue
        for d in dimensions:
            if d == PERSONAL:
                keep = np.flatnonzero(pairs.context[rows] >= 0)
                if len(keep) == 0:
                    continue
                both = torch.as_tensor(np.concatenate([keep, keep + b]))
                user = emb[torch.as_tensor(pairs.context[rows][keep])].repeat(2, 1, 1).to(pixels.device)
                s = model.score_dimension({k: v[both] for k, v in feats.items()}, d, user).cpu().numpy()
                out[d][0][rows[keep]], out[d][1][rows[keep]] = s[: len(keep)], s[len(keep):]
            else:
                s = model.score_dimension(feats, d).cpu().numpy()
                out[d][0][rows], out[d][1][rows] = s[:b], s[b:]
    model.train(was_training)
    return out


def accuracy_against(labels: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> tuple[float, int]:
    """(accuracy, n) over decided pairs (label 0 or 1, scores finite); equal scores count half."""
    ok = ((labels == 0) | (labels == 1)) & np.isfinite(score_a) & np.isfinite(score_b)
    if not ok.any():
        return float("nan"), 0
    agree = np.where(score_a[ok] == score_b[ok], 0.5, ((score_a[ok] > score_b[ok]) == (labels[ok] == 1)))
    return float(np.mean(agree)), int(ok.sum())


def evaluate_pairs(model: Any, pairs: Any, dimensions: list[str], mask: np.ndarray | None = None,
                   scores: dict | None = None) -> dict[str, dict[str, float]]:
    """Per dimension: accuracy against the pairs' labels, the Bayes ceiling, the accuracy against the
    noiseless oracle preference (P(a) > 0.5), and the number of decided pairs."""
    from pixpref.scorer.toylabels import bayes_ceiling

    scores = scores if scores is not None else score_pairs(model, pairs, dimensions)
    mask = np.ones(len(pairs), bool) if mask is None else mask
    out = {}
    for d in dimensions:
        labels = np.where(mask, pairs.labels[d], np.nan)
        acc, n = accuracy_against(labels, *scores[d])
        p = pairs.probs[d]
        noiseless = np.where((labels == 0) | (labels == 1), (p > 0.5).astype(float), np.nan)
        acc_oracle, _ = accuracy_against(noiseless, *scores[d])
        out[d] = {"accuracy": acc, "bayes_ceiling": bayes_ceiling(p, labels), "oracle_accuracy": acc_oracle,
                  "n": n}
    return out


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b between two score vectors (scipy)."""
    from scipy.stats import kendalltau

    if len(x) < 2:
        return float("nan")
    return float(kendalltau(x, y).statistic)


# ------------------------------------------------------------------------------------------ Pick-a-Pic


def _score_images(scorer: Any, images: list[np.ndarray], prompts: list[str], dimension: str,
                  batch_size: int) -> np.ndarray:
    scores = scorer.score(images, prompts, [dimension], batch_size=batch_size, progress=False)
    return scores[dimension].numpy()


def pickapic_accuracy(scorer: Any, path: str | Path, dimension: str = "overall", limit: int | None = None,
                      batch_size: int = 32, image_size: int | None = None,
                      progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """Accuracy of ``scorer`` on Pick-a-Pic v2 pairs (a parquet file or folder, e.g. ``test_unique``).

    Returns ``accuracy`` (ties count half for any prediction), ``accuracy_decided`` (ties left out) and the
    counts. ``image_size`` decodes images at that size (default: as stored; the scorer resizes anyway).
    """
    from pixpref.data.pairs import ReadStats
    from pixpref.data.pickapic import iter_pickapic

    stats = ReadStats()
    credit, decided_ok, n, ties = 0.0, 0, 0, 0
    buffer: list[Any] = []

    def flush() -> None:
        nonlocal credit, decided_ok, n, ties
        if not buffer:
            return
        prompts = [p.prompt for p in buffer]
        s_chosen = _score_images(scorer, [p.chosen for p in buffer], prompts, dimension, batch_size)
        s_rejected = _score_images(scorer, [p.rejected for p in buffer], prompts, dimension, batch_size)
        for pair, a, b in zip(buffer, s_chosen, s_rejected, strict=True):
            n += 1
            if pair.is_tie:
                ties += 1
                credit += 0.5
            else:
                right = 1.0 if a > b else (0.5 if a == b else 0.0)
                credit += right
                decided_ok += right
        if progress:
            progress(n)
        buffer.clear()

    for pair in iter_pickapic(path, tie_policy="soft", size=image_size, stats=stats):
        buffer.append(pair)
        if len(buffer) >= batch_size:
            flush()
        if limit is not None and n + len(buffer) >= limit:
            break
    flush()
    if n == 0:
        raise PixprefError(f"no usable labelled pairs in {path} (read stats: {stats.to_dict()})")
    decided = n - ties
    return {"accuracy": credit / n, "accuracy_decided": decided_ok / decided if decided else float("nan"),
            "pairs": n, "ties": ties, "skipped": int(sum(stats.skipped.values()))}


# --------------------------------------------------------------------------------------------- HPD v2


def read_hpdv2(meta_file: str | Path, image_folder: str | Path | None = None) -> list[dict[str, Any]]:
    """Read an HPD v2 test file -> [{"prompt", "images": [paths], "rank": [float]}] (rank 1 = best).

    Entries hold ``prompt``, ``image_path`` (paths relative to ``image_folder``, default: the file's folder)
    and ``rank``; or ``raw_annotations`` (a list of annotators' rank lists, averaged) instead of ``rank``.
    """
    meta_file = Path(meta_file)
    if not meta_file.is_file():
        raise PixprefError(f"HPD v2 file not found: {meta_file}")
    data = read_json(meta_file)
    if not isinstance(data, list):
        raise PixprefError(f"{meta_file} must hold a JSON list of entries (HPD v2 test.json layout)")
    folder = Path(image_folder) if image_folder is not None else meta_file.parent
    out = []
    for i, item in enumerate(data):
        where = f"{meta_file} entry {i}"
        if not isinstance(item, dict) or "prompt" not in item or "image_path" not in item:
            raise PixprefError(f"{where}: needs 'prompt' and 'image_path' (HPD v2 test layout)")
        paths = item["image_path"]
        if "rank" in item:
            rank = [float(r) for r in item["rank"]]
        elif "raw_annotations" in item:
            raw = np.asarray(item["raw_annotations"], dtype=np.float64)
            if raw.ndim != 2 or raw.shape[1] != len(paths):
                raise PixprefError(f"{where}: raw_annotations must be rank lists of {len(paths)} entries each")
            rank = raw.mean(axis=0).tolist()
        else:
            raise PixprefError(f"{where}: needs 'rank' or 'raw_annotations'")
        if len(rank) != len(paths) or len(paths) < 2:
            raise PixprefError(f"{where}: {len(paths)} images but {len(rank)} ranks (need >= 2 images)")
        images = [folder / p for p in paths]
        for p in images:
            if not p.is_file():
                raise PixprefError(f"{where}: image not found: {p} (pass the HPD v2 test image folder)")
        out.append({"prompt": str(item["prompt"]), "images": images, "rank": rank})
    if not out:
        raise PixprefError(f"{meta_file} holds no entries")
    return out


def rank_agreement(scores: np.ndarray, rank: np.ndarray) -> tuple[float, int]:
    """Share of image pairs ordered by ``scores`` (higher better) as by ``rank`` (lower better); pairs tied
    in ``rank`` are left out, tied scores count half. -> (agreement, number of pairs)."""
    scores, rank = np.asarray(scores, np.float64), np.asarray(rank, np.float64)
    i, j = np.triu_indices(len(rank), k=1)
    keep = rank[i] != rank[j]
    if not keep.any():
        return float("nan"), 0
    i, j = i[keep], j[keep]
    better_true = rank[i] < rank[j]
    agree = np.where(scores[i] == scores[j], 0.5, (scores[i] > scores[j]) == better_true)
    return float(agree.mean()), int(keep.sum())


def hpdv2_accuracy(scorer: Any, meta_file: str | Path, image_folder: str | Path | None = None,
                   dimension: str = "overall", limit: int | None = None, batch_size: int = 32) -> dict[str, float]:
    """HPS v2 ranking accuracy of ``scorer`` on HPD v2 test: mean over prompts of :func:`rank_agreement`."""
    entries = read_hpdv2(meta_file, image_folder)[:limit]
    per_prompt, pairs = [], 0
    for entry in entries:
        s = _score_images(scorer, [str(p) for p in entry["images"]], entry["prompt"], dimension, batch_size)
        acc, n = rank_agreement(s, np.asarray(entry["rank"]))
        if n:
            per_prompt.append(acc)
            pairs += n
    if not per_prompt:
        raise PixprefError(f"{meta_file}: no entry has two images of different rank")
    return {"accuracy": float(np.mean(per_prompt)), "prompts": len(per_prompt), "pairs": pairs}
