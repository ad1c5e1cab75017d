"""The hand-made folder format: one JSONL file plus image files beside it.

Each non-blank line is a JSON object::

    {"prompt": "a red fox", "chosen": "images/0001_a.png", "rejected": "images/0001_b.png",
     "user_id": "alice", "label": 1.0}

``prompt``, ``chosen`` and ``rejected`` are required; ``user_id`` defaults to ``"anonymous"`` and
``label`` to 1.0 (0.5 marks a tie, handled by the tie policy). Image paths are relative to the JSONL
file's folder and may not leave it (no absolute paths, no ``..``). Every problem is a PixprefError that
names the file and line number.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from pixpref.data.pairs import (
    SKIP_TIE,
    TIE_POLICIES,
    PreferencePair,
    ReadStats,
)
from pixpref.errors import PixprefError, unknown_name
from pixpref.io_utils import atomic_path, check_output_path

REQUIRED_KEYS = ("prompt", "chosen", "rejected")
OPTIONAL_KEYS = ("user_id", "label")
DEFAULT_USER = "anonymous"


def _image_path(root: Path, value: Any, key: str, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise PixprefError(f"{where}: {key!r} must be a non-empty relative image path, got {value!r}")
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute() or value.startswith("~"):
        raise PixprefError(f"{where}: {key!r} path {value!r} is absolute; paths must be relative to {root}")
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if ".." in parts:
        raise PixprefError(f"{where}: {key!r} path {value!r} leaves the folder {root} ('..' is not allowed)")
    path = root / value
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:  # a symlink pointing out of the folder
        raise PixprefError(f"{where}: {key!r} path {value!r} resolves outside the folder {root}") from None
    if not path.is_file():
        raise PixprefError(f"{where}: {key!r} image file not found: {path}")
    return path


def _parse_line(line: str, root: Path, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise PixprefError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise PixprefError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise PixprefError(f"{where}: missing key(s) {', '.join(missing)}; required keys: "
                           f"{', '.join(REQUIRED_KEYS)} (optional: {', '.join(OPTIONAL_KEYS)})")
    unknown = [k for k in obj if k not in REQUIRED_KEYS + OPTIONAL_KEYS]
    if unknown:
        raise PixprefError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; valid keys: "
                           f"{', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
        raise PixprefError(f"{where}: 'prompt' must be a non-empty string, got {obj['prompt']!r}")
    user = obj.get("user_id", DEFAULT_USER)
    if not isinstance(user, (str, int)) or isinstance(user, bool) or str(user) == "":
        raise PixprefError(f"{where}: 'user_id' must be a non-empty string or integer, got {user!r}")
    label = obj.get("label", 1.0)
    if isinstance(label, bool) or label not in (1, 1.0, 0.5):
        raise PixprefError(f"{where}: 'label' must be 1.0 (chosen preferred) or 0.5 (tie), got {label!r}")
    chosen = _image_path(root, obj["chosen"], "chosen", where)
    rejected = _image_path(root, obj["rejected"], "rejected", where)
    if chosen.resolve() == rejected.resolve():
        raise PixprefError(f"{where}: 'chosen' and 'rejected' are the same file {obj['chosen']!r}")
    return {"prompt": obj["prompt"].strip(), "chosen": chosen, "rejected": rejected,
            "user_id": str(user), "label": float(label)}


def iter_jsonl(path: str | Path, *, tie_policy: str = "drop", decode_images: bool = True,
               size: int | None = None, max_pixels: int | None = None, alpha: str = "white",
               stats: ReadStats | None = None) -> Iterator[PreferencePair]:
    """Read and validate a JSONL pair file. Images are decoded (H, W, 3) uint8, or Paths if not decoding.

    ``index`` counts the file's records (non-blank lines) from 0, ties included, so it is stable across
    tie policies. Undecodable images raise (a hand-made folder should be fixed, not silently thinned).
    """
    from pixpref.data.images import DEFAULT_MAX_PIXELS, load_rgb

    if tie_policy not in TIE_POLICIES:
        raise unknown_name("tie policy", tie_policy, TIE_POLICIES)
    path = Path(path)
    if not path.is_file():
        raise PixprefError(f"JSONL file not found: {path}")
    if path.stat().st_size == 0:
        raise PixprefError(f"{path} is empty; expected one JSON object per line")
    stats = stats if stats is not None else ReadStats()
    stats.files += 1
    root = path.parent
    index = -1
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            index += 1
            where = f"{path} line {lineno}"
            rec = _parse_line(line, root, where)
            stats.rows_read += 1
            if rec["label"] == 0.5 and tie_policy == "drop":
                stats.skip(SKIP_TIE)
                continue
            chosen, rejected = rec["chosen"], rec["rejected"]
            if decode_images:
                kw = {"size": size, "max_pixels": max_pixels or DEFAULT_MAX_PIXELS, "alpha": alpha}
                chosen = load_rgb(chosen, f"{where} chosen", **kw)
                rejected = load_rgb(rejected, f"{where} rejected", **kw)
            stats.pairs += 1
            stats.ties_kept += rec["label"] == 0.5
            yield PreferencePair(prompt=rec["prompt"], chosen=chosen, rejected=rejected, user_id=rec["user_id"],
                                 label=rec["label"], index=index, source={"file": str(path), "line": lineno})
    if index < 0:
        raise PixprefError(f"{path} holds no records (only blank lines)")


class JsonlWriter:
    """Write pairs as PNG files in ``<stem>_images/`` next to a JSONL file.

    Each image is written atomically; the JSONL itself is written to a temp file and renamed only when
    the ``with`` block succeeds, so a failed write never leaves a JSONL pointing at missing images.

        with JsonlWriter("pairs.jsonl") as w:
            w.write(pair)   # a PreferencePair, or a dict with prompt/chosen/rejected/user_id/label
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False) -> None:
        self.path = check_output_path(path, overwrite)
        self.image_dir = self.path.parent / f"{self.path.stem}_images"
        self.count = 0
        self._ctx: Any = None
        self._file: Any = None

    def __enter__(self) -> JsonlWriter:
        self.image_dir.mkdir(parents=True, exist_ok=True)
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._file = open(tmp, "w", encoding="utf-8")
        return self

    def _save_png(self, image: Any, name: str, where: str) -> str:
        from pixpref.data.images import encode_image, load_rgb

        data = encode_image(load_rgb(image, where), "PNG", where)
        target = self.image_dir / name
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
        return f"{self.image_dir.name}/{name}"

    def write(self, pair: PreferencePair | dict[str, Any]) -> None:
        if self._file is None:
            raise PixprefError("JsonlWriter.write() called outside its `with` block")
        rec = pair if isinstance(pair, dict) else {
            "prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected,
            "user_id": pair.user_id, "label": pair.label,
        }
        where = f"record {self.count} for {self.path}"
        missing = [k for k in REQUIRED_KEYS if rec.get(k) is None]
        if missing:
            raise PixprefError(f"{where}: missing key(s) {', '.join(missing)}")
        label = float(rec.get("label", 1.0))
        if label not in (1.0, 0.5):
            raise PixprefError(f"{where}: label must be 1.0 or 0.5, got {label}")
        line = {
            "prompt": str(rec["prompt"]),
            "chosen": self._save_png(rec["chosen"], f"{self.count:06d}_chosen.png", f"{where} chosen"),
            "rejected": self._save_png(rec["rejected"], f"{self.count:06d}_rejected.png", f"{where} rejected"),
            "user_id": str(rec.get("user_id", DEFAULT_USER)),
            "label": label,
        }
        self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.count += 1

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._file.close()
        self._file = None
        self._ctx.__exit__(exc_type, exc, tb)


def write_jsonl(pairs: Iterable[PreferencePair | dict[str, Any]], path: str | Path, *,
                overwrite: bool = False) -> int:
    """Write ``pairs`` with :class:`JsonlWriter`; returns the number written."""
    with JsonlWriter(path, overwrite=overwrite) as w:
        for pair in pairs:
            w.write(pair)
    return w.count
