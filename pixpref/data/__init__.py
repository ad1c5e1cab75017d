"""pixpref.data: preference pairs (Pick-a-Pic v2 parquet, JSONL folders), few-shot grouping, splits.

    pairs.py     PreferencePair / PairMeta records, ReadStats, DataConfig, format detection
    images.py    safe decoding of image bytes to RGB uint8
    pickapic.py  streaming Pick-a-Pic reader and writer (PICKAPIC_COLUMNS layout)
    jsonl.py     the hand-made JSONL + image files format
    fewshot.py   per-user chunks of k pairs, user and prompt splits
    stats.py     data set summary (``pixpref data stats``)

Names below are imported lazily, so ``import pixpref.data`` stays light (no pyarrow, no PIL).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PreferencePair": "pairs", "PairMeta": "pairs", "ReadStats": "pairs", "DataConfig": "pairs",
    "detect_format": "pairs", "iter_pairs": "pairs", "iter_meta": "pairs",
    "decode_rgb": "images", "load_rgb": "images", "encode_image": "images",
    "PICKAPIC_COLUMNS": "pickapic", "iter_pickapic": "pickapic", "iter_pickapic_meta": "pickapic",
    "take_pickapic": "pickapic", "PickapicWriter": "pickapic", "write_pickapic": "pickapic",
    "iter_jsonl": "jsonl", "JsonlWriter": "jsonl", "write_jsonl": "jsonl",
    "FewShotChunk": "fewshot", "make_chunks": "fewshot", "make_splits": "fewshot",
    "split_users": "fewshot", "split_prompts": "fewshot",
    "dataset_stats": "stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"pixpref.data.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'pixpref.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
