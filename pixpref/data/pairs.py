"""The preference pair record, its light metadata, read statistics and the data config.

A :class:`PreferencePair` is one pairwise choice: a prompt, the image the user chose, the image they
rejected, who chose, and a label. ``label == 1.0`` means *chosen* was strictly preferred; ``label == 0.5``
is a tie (kept only under ``tie_policy="soft"``; the loss must then use the label, never treat image 0 as
the winner). Readers always put the winner in ``chosen``.

:class:`PairMeta` is the same pair without images (user, prompt, label, index) — what few-shot grouping
and splits work on, so a 300 GB set can be grouped without decoding a single image.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pixpref.errors import PixprefError, unknown_name

TIE_POLICIES = ("drop", "soft")
FORMATS = ("auto", "pickapic", "jsonl")
ALPHA_POLICIES = ("white", "drop")

# Reasons a source row does not become a pair (keys of ReadStats.skipped).
SKIP_NOT_LABELLED = "not_labelled"
SKIP_IDENTICAL = "identical_images"
SKIP_TIE = "tie_dropped"
SKIP_INVALID_LABEL = "invalid_label"
SKIP_MISSING_IMAGE = "missing_image"
SKIP_CORRUPT_IMAGE = "corrupt_image"
SKIP_EMPTY_PROMPT = "empty_prompt"

if TYPE_CHECKING:
    import numpy as np

    # An image is bytes (encoded), a path to a file, or a decoded (H, W, 3) uint8 array.
    ImageLike = bytes | Path | np.ndarray


@dataclasses.dataclass
class PreferencePair:
    """One pairwise choice. ``chosen`` is always the winner (or image 0 of a tie, with ``label=0.5``).

    Attributes:
        prompt: the caption the two images were generated for.
        chosen: preferred image — encoded bytes, a file path, or a decoded (H, W, 3) uint8 array.
        rejected: the other image, same kinds.
        user_id: who made the choice (always a string; Pick-a-Pic's integer ids are converted).
        label: 1.0 = chosen strictly preferred; 0.5 = tie.
        index: position of the source row in its data set (stable across reads; used by few-shot chunks).
        source: where the pair came from (file, row, ranking id, image uids...) for error messages.
    """

    prompt: str
    chosen: ImageLike
    rejected: ImageLike
    user_id: str
    label: float = 1.0
    index: int = -1
    source: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_tie(self) -> bool:
        return self.label == 0.5

    def where(self) -> str:
        """A short description of the source row, for messages."""
        if "file" in self.source and "row" in self.source:
            return f"{self.source['file']} row {self.source['row']}"
        if "file" in self.source and "line" in self.source:
            return f"{self.source['file']} line {self.source['line']}"
        return f"pair {self.index}"

    def chosen_rgb(self, size: int | None = None, **kwargs: Any) -> np.ndarray:
        """The chosen image decoded to (H, W, 3) uint8 (see :func:`pixpref.data.images.load_rgb`)."""
        from pixpref.data.images import load_rgb

        return load_rgb(self.chosen, where=f"{self.where()} (chosen)", size=size, **kwargs)

    def rejected_rgb(self, size: int | None = None, **kwargs: Any) -> np.ndarray:
        """The rejected image decoded to (H, W, 3) uint8."""
        from pixpref.data.images import load_rgb

        return load_rgb(self.rejected, where=f"{self.where()} (rejected)", size=size, **kwargs)

    def meta(self) -> PairMeta:
        return PairMeta(index=self.index, user_id=self.user_id, prompt=self.prompt, label=self.label)


@dataclasses.dataclass(frozen=True)
class PairMeta:
    """A pair without its images: enough for grouping users into few-shot chunks and for splits."""

    index: int
    user_id: str
    prompt: str
    label: float = 1.0


@dataclasses.dataclass
class ReadStats:
    """What a reader saw: rows read, pairs yielded, ties kept, and rows skipped by reason."""

    rows_read: int = 0
    pairs: int = 0
    ties_kept: int = 0
    batches: int = 0
    files: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "pairs": self.pairs,
            "ties_kept": self.ties_kept,
            "batches": self.batches,
            "files": self.files,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_total": int(sum(self.skipped.values())),
        }


def resolve_label(label_0: Any, label_1: Any) -> tuple[str | None, bool, float]:
    """Interpret Pick-a-Pic's (label_0, label_1).

    Returns ``(skip_reason_or_None, swap, label)``: ``swap`` is True when image 1 won (so it becomes
    ``chosen``); ``label`` is 1.0 for a strict preference and 0.5 for a tie. A tie returns reason
    ``SKIP_TIE``; the caller decides by tie policy whether to keep it.
    """
    try:
        a, b = float(label_0), float(label_1)
    except (TypeError, ValueError):
        return SKIP_INVALID_LABEL, False, 0.0
    if a == 0.5 and b == 0.5:
        return SKIP_TIE, False, 0.5
    if a == 1.0 and b == 0.0:
        return None, False, 1.0
    if a == 0.0 and b == 1.0:
        return None, True, 1.0
    return SKIP_INVALID_LABEL, False, 0.0


@dataclasses.dataclass
class DataConfig:
    """Where preference pairs come from and how they are grouped (YAML section ``data``).

    Attributes:
        path: a Pick-a-Pic style parquet file or folder of them, or a JSONL file; empty = toy world.
        format: ``auto`` (by suffix/contents), ``pickapic`` or ``jsonl``.
        tie_policy: ``drop`` skips ties (counted); ``soft`` keeps them with label 0.5.
        k: pairs per few-shot chunk (PPD: 4).
        max_chunks_per_user: at most this many disjoint chunks per user (PPD: 20).
        image_size: decoded images are resized (shorter side) and centre-cropped to this; None = as stored.
        max_image_pixels: images with more pixels than this are refused (decompression-bomb guard).
        alpha: transparent images are composited on ``white`` or have their alpha channel ``drop``-ped.
        unseen_user_fraction: fraction of users held out entirely (unseen-user split).
        heldout_prompt_fraction: fraction of prompts held out from training (held-out-caption split).
        seed: seeds shuffling of each user's pairs and both splits.
        batch_rows: rows per streamed parquet batch (memory bound, not a training batch size).
    """

    path: str = ""
    format: Literal["auto", "pickapic", "jsonl"] = "auto"
    tie_policy: Literal["drop", "soft"] = "drop"
    k: int = 4
    max_chunks_per_user: int = 20
    image_size: int | None = None
    max_image_pixels: int = 4096 * 4096
    alpha: Literal["white", "drop"] = "white"
    unseen_user_fraction: float = 0.1
    heldout_prompt_fraction: float = 0.05
    seed: int = 0
    batch_rows: int = 256

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise unknown_name("data format", self.format, FORMATS)
        if self.tie_policy not in TIE_POLICIES:
            raise unknown_name("tie policy", self.tie_policy, TIE_POLICIES)
        if self.alpha not in ALPHA_POLICIES:
            raise unknown_name("alpha policy", self.alpha, ALPHA_POLICIES)
        if self.k < 1:
            raise PixprefError(f"data.k must be >= 1 (pairs per few-shot chunk), got {self.k}")
        if self.max_chunks_per_user < 1:
            raise PixprefError(f"data.max_chunks_per_user must be >= 1, got {self.max_chunks_per_user}")
        if self.image_size is not None and not 8 <= self.image_size <= 4096:
            raise PixprefError(f"data.image_size must be between 8 and 4096 (or null), got {self.image_size}")
        if self.max_image_pixels < 1:
            raise PixprefError(f"data.max_image_pixels must be >= 1, got {self.max_image_pixels}")
        for name in ("unseen_user_fraction", "heldout_prompt_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise PixprefError(f"data.{name} must be in [0, 1), got {value}")
        if self.batch_rows < 1:
            raise PixprefError(f"data.batch_rows must be >= 1, got {self.batch_rows}")


def detect_format(path: str | Path) -> str:
    """``pickapic`` for a parquet file or a folder holding parquet files, ``jsonl`` for a JSONL file."""
    if any(ch in str(path) for ch in "*?["):  # a glob of parquet shards
        return "pickapic"
    path = Path(path)
    if not path.exists():
        raise PixprefError(f"data path not found: {path}")
    if path.is_dir():
        if any(path.glob("*.parquet")):
            return "pickapic"
        if any(path.glob("*.jsonl")):
            raise PixprefError(f"{path} is a folder of JSONL files; pass the JSONL file itself")
        raise PixprefError(f"folder {path} holds no .parquet files (expected Pick-a-Pic parquet shards)")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "pickapic"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PAR1":
        return "pickapic"
    if head[:1] in (b"{", b"\n", b" "):
        return "jsonl"
    raise PixprefError(
        f"cannot tell the format of {path}; valid formats: a .parquet file or folder (pickapic), a .jsonl file"
    )


def iter_meta(path: str | Path, fmt: str = "auto", tie_policy: str = "drop", batch_rows: int = 4096,
              stats: ReadStats | None = None) -> Iterator[PairMeta]:
    """Stream light pair metadata (no images) from either format."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "pickapic":
        from pixpref.data.pickapic import iter_pickapic_meta

        return iter_pickapic_meta(path, tie_policy=tie_policy, batch_rows=batch_rows, stats=stats)
    if fmt == "jsonl":
        from pixpref.data.jsonl import iter_jsonl

        return (p.meta() for p in iter_jsonl(path, tie_policy=tie_policy, decode_images=False, stats=stats))
    raise unknown_name("data format", fmt, FORMATS)


def iter_pairs(cfg: DataConfig, stats: ReadStats | None = None, decode_images: bool = True
               ) -> Iterator[PreferencePair]:
    """Stream pairs described by a :class:`DataConfig` (images decoded unless ``decode_images=False``)."""
    if not cfg.path:
        raise PixprefError("data.path is empty; give a Pick-a-Pic parquet file/folder or a JSONL file")
    fmt = detect_format(cfg.path) if cfg.format == "auto" else cfg.format
    image_kw = {"size": cfg.image_size, "max_pixels": cfg.max_image_pixels, "alpha": cfg.alpha}
    if fmt == "pickapic":
        from pixpref.data.pickapic import iter_pickapic

        return iter_pickapic(cfg.path, tie_policy=cfg.tie_policy, decode_images=decode_images,
                             batch_rows=cfg.batch_rows, stats=stats, **image_kw)
    from pixpref.data.jsonl import iter_jsonl

    return iter_jsonl(cfg.path, tie_policy=cfg.tie_policy, decode_images=decode_images, stats=stats, **image_kw)
