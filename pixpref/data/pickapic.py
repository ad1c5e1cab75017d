"""Pick-a-Pic v2 parquet: a streaming reader and an atomic writer in the same column layout.

The reader never loads a file whole: it walks ``pyarrow.parquet.ParquetFile.iter_batches`` over only
the columns it needs, ``batch_rows`` rows at a time, so the ~300 GB set streams in bounded memory. It
keeps rows with ``has_label`` and ``are_different``, puts the winner in ``chosen`` (``label_0 == 0``
means image 1 won), applies the tie policy, and counts every skipped row by reason in a
:class:`~pixpref.data.pairs.ReadStats`.

Each row has a stable global ``index``: its position in the files taken in sorted order. Few-shot
chunks refer to pairs by this index, and :func:`take_pickapic` loads just those rows back.

The writer (:class:`PickapicWriter`, :func:`write_pickapic`) produces files in the exact published
column layout (``PICKAPIC_COLUMNS``), filling defaults for optional columns, so toy-world pairs and
real data go through the same reader.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pixpref.data.pairs import (
    SKIP_CORRUPT_IMAGE,
    SKIP_EMPTY_PROMPT,
    SKIP_IDENTICAL,
    SKIP_MISSING_IMAGE,
    SKIP_NOT_LABELLED,
    SKIP_TIE,
    TIE_POLICIES,
    PairMeta,
    PreferencePair,
    ReadStats,
    resolve_label,
)
from pixpref.errors import PixprefError, unknown_name
from pixpref.io_utils import atomic_path, check_output_path

# The published Pick-a-Pic v2 columns, in order.
PICKAPIC_COLUMNS = (
    "are_different", "best_image_uid", "caption", "created_at", "has_label", "image_0_uid", "image_0_url",
    "image_1_uid", "image_1_url", "jpg_0", "jpg_1", "label_0", "label_1", "model_0", "model_1",
    "ranking_id", "user_id", "num_example_per_prompt",
)
# Needed to build a pair's metadata / the pair itself. Others are used when present.
META_COLUMNS = ("caption", "label_0", "label_1", "user_id")
IMAGE_COLUMNS = ("jpg_0", "jpg_1")
OPTIONAL_COLUMNS = ("are_different", "has_label", "ranking_id", "image_0_uid", "image_1_uid")
# Columns a writer row must give; the rest get defaults.
WRITER_REQUIRED = ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "user_id")


def pickapic_files(path: str | Path) -> list[Path]:
    """A parquet file, the sorted ``*.parquet`` files of a folder, or the files a glob pattern matches
    (e.g. ``data/train-*.parquet``, the published shard names)."""
    if any(ch in str(path) for ch in "*?["):
        files = sorted(p for p in Path(str(path)).parent.glob(Path(str(path)).name) if p.is_file())
        if not files:
            raise PixprefError(f"no parquet files match {path}")
        return files
    path = Path(path)
    if not path.exists():
        raise PixprefError(f"Pick-a-Pic path not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.glob("*.parquet") if p.is_file())
        if not files:
            raise PixprefError(f"folder {path} holds no .parquet files")
        return files
    return [path]


def _open(file: Path, needed: Sequence[str]) -> Any:
    """Open a parquet file and check it has the ``needed`` columns; errors name the file."""
    import pyarrow.parquet as pq

    if file.stat().st_size == 0:
        raise PixprefError(f"{file} is empty (0 bytes), not a parquet file")
    try:
        pf = pq.ParquetFile(file)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError with long messages
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PixprefError(f"{file} is not a readable parquet file: {msg}") from None
    names = set(pf.schema_arrow.names)
    missing = [c for c in needed if c not in names]
    if missing:
        raise PixprefError(
            f"{file} lacks required Pick-a-Pic column(s): {', '.join(missing)}; "
            f"it has: {', '.join(pf.schema_arrow.names)}"
        )
    return pf


def _iter_rows(path: str | Path, with_images: bool, batch_rows: int, stats: ReadStats
               ) -> Iterator[tuple[Path, int, int, dict[str, Any]]]:
    """Yield ``(file, row_in_file, global_index, row_dict)`` streaming ``batch_rows`` at a time."""
    if batch_rows < 1:
        raise PixprefError(f"batch_rows must be >= 1, got {batch_rows}")
    needed = META_COLUMNS + (IMAGE_COLUMNS if with_images else ())
    files = pickapic_files(path)
    opened = [(f, _open(f, needed)) for f in files]  # check every file's schema before reading any rows
    offset = 0
    for file, pf in opened:
        stats.files += 1
        names = set(pf.schema_arrow.names)
        columns = list(needed) + [c for c in OPTIONAL_COLUMNS if c in names]
        row = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            stats.batches += 1
            cols = {name: batch.column(name).to_pylist() for name in columns}
            for i in range(batch.num_rows):
                yield file, row, offset + row, {name: cols[name][i] for name in columns}
                row += 1
        offset += pf.metadata.num_rows


def _classify(rec: dict[str, Any], tie_policy: str) -> tuple[str | None, bool, float]:
    """(skip reason or None, swap, label) for one row, applying filters in a fixed order."""
    if rec.get("has_label") is False:
        return SKIP_NOT_LABELLED, False, 0.0
    if rec.get("are_different") is False:
        return SKIP_IDENTICAL, False, 0.0
    if not (rec.get("caption") or "").strip():
        return SKIP_EMPTY_PROMPT, False, 0.0
    reason, swap, label = resolve_label(rec.get("label_0"), rec.get("label_1"))
    if reason == SKIP_TIE:
        return (SKIP_TIE, False, 0.0) if tie_policy == "drop" else (None, False, 0.5)
    return reason, swap, label


def _check_policy(tie_policy: str) -> None:
    if tie_policy not in TIE_POLICIES:
        raise unknown_name("tie policy", tie_policy, TIE_POLICIES)


def _source(file: Path, row: int, rec: dict[str, Any]) -> dict[str, Any]:
    src: dict[str, Any] = {"file": str(file), "row": row}
    for key in ("ranking_id", "image_0_uid", "image_1_uid"):
        if rec.get(key) is not None:
            src[key] = rec[key]
    return src


def iter_pickapic_meta(path: str | Path, *, tie_policy: str = "drop", batch_rows: int = 4096,
                       stats: ReadStats | None = None) -> Iterator[PairMeta]:
    """Stream :class:`PairMeta` (no image columns are read) for the rows that pass the filters."""
    _check_policy(tie_policy)
    stats = stats if stats is not None else ReadStats()
    for _file, _row, index, rec in _iter_rows(path, False, batch_rows, stats):
        stats.rows_read += 1
        reason, _swap, label = _classify(rec, tie_policy)
        if reason is not None:
            stats.skip(reason)
            continue
        stats.pairs += 1
        stats.ties_kept += label == 0.5
        yield PairMeta(index=index, user_id=str(rec["user_id"]), prompt=rec["caption"].strip(), label=label)


def _make_pair(file: Path, row: int, index: int, rec: dict[str, Any], swap: bool, label: float,
               decode_images: bool, stats: ReadStats, image_kw: dict[str, Any]) -> PreferencePair | None:
    img0, img1 = rec.get("jpg_0"), rec.get("jpg_1")
    if not img0 or not img1:
        stats.skip(SKIP_MISSING_IMAGE)
        return None
    if img0 == img1:
        stats.skip(SKIP_IDENTICAL)
        return None
    where = f"{file} row {row}"
    if decode_images:
        from pixpref.data.images import decode_rgb

        try:
            img0 = decode_rgb(img0, f"{where} jpg_0", **image_kw)
            img1 = decode_rgb(img1, f"{where} jpg_1", **image_kw)
        except PixprefError:
            stats.skip(SKIP_CORRUPT_IMAGE)
            return None
    chosen, rejected = (img1, img0) if swap else (img0, img1)
    return PreferencePair(prompt=rec["caption"].strip(), chosen=chosen, rejected=rejected,
                          user_id=str(rec["user_id"]), label=label, index=index,
                          source=_source(file, row, rec))


def iter_pickapic(path: str | Path, *, tie_policy: str = "drop", decode_images: bool = True,
                  size: int | None = None, max_pixels: int | None = None, alpha: str = "white",
                  batch_rows: int = 256, stats: ReadStats | None = None) -> Iterator[PreferencePair]:
    """Stream :class:`PreferencePair` records from a Pick-a-Pic parquet file or folder.

    With ``decode_images`` (default) images are decoded to (H, W, 3) uint8 and rows whose images do not
    decode are skipped as ``corrupt_image``; otherwise ``chosen``/``rejected`` are the encoded bytes.
    """
    from pixpref.data.images import DEFAULT_MAX_PIXELS

    _check_policy(tie_policy)
    stats = stats if stats is not None else ReadStats()
    image_kw = {"size": size, "max_pixels": max_pixels or DEFAULT_MAX_PIXELS, "alpha": alpha}
    for file, row, index, rec in _iter_rows(path, True, batch_rows, stats):
        stats.rows_read += 1
        reason, swap, label = _classify(rec, tie_policy)
        if reason is not None:
            stats.skip(reason)
            continue
        pair = _make_pair(file, row, index, rec, swap, label, decode_images, stats, image_kw)
        if pair is None:
            continue
        stats.pairs += 1
        stats.ties_kept += label == 0.5
        yield pair


def take_pickapic(path: str | Path, indices: Iterable[int], *, tie_policy: str = "drop",
                  decode_images: bool = True, size: int | None = None, max_pixels: int | None = None,
                  alpha: str = "white") -> list[PreferencePair]:
    """Load the pairs with the given global ``indices`` (reading only the row groups that hold them).

    Returned in the order asked. An index whose row is filtered out (tie under ``drop``, unlabelled,
    corrupt image...) raises PixprefError naming the row and the reason.
    """
    from pixpref.data.images import DEFAULT_MAX_PIXELS

    _check_policy(tie_policy)
    wanted = list(indices)
    needed = META_COLUMNS + IMAGE_COLUMNS
    opened = [(f, _open(f, needed)) for f in pickapic_files(path)]
    # global index -> (file, parquet handle, row group, row within group, row within file)
    spans = []
    offset = 0
    for file, pf in opened:
        row_in_file = 0
        for rg in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            spans.append((offset + row_in_file, n, file, pf, rg, row_in_file))
            row_in_file += n
        offset += pf.metadata.num_rows
    total = offset
    by_group: dict[int, list[int]] = {}
    for idx in wanted:
        if not 0 <= idx < total:
            raise PixprefError(f"pair index {idx} is out of range; {path} holds {total} rows")
        lo, hi = 0, len(spans) - 1
        while lo < hi:  # binary search for the row group holding idx
            mid = (lo + hi + 1) // 2
            if spans[mid][0] <= idx:
                lo = mid
            else:
                hi = mid - 1
        by_group.setdefault(lo, []).append(idx)
    image_kw = {"size": size, "max_pixels": max_pixels or DEFAULT_MAX_PIXELS, "alpha": alpha}
    found: dict[int, PreferencePair] = {}
    for span_i, idxs in by_group.items():
        start, _n, file, pf, rg, file_row0 = spans[span_i]
        names = set(pf.schema_arrow.names)
        columns = list(needed) + [c for c in OPTIONAL_COLUMNS if c in names]
        table = pf.read_row_group(rg, columns=columns)
        for idx in idxs:
            rec = {c: table.column(c)[idx - start].as_py() for c in columns}
            row = file_row0 + idx - start
            reason, swap, label = _classify(rec, tie_policy)
            if reason is not None:
                raise PixprefError(f"{file} row {row} (pair index {idx}) is not a usable pair: {reason}")
            stats = ReadStats()
            pair = _make_pair(file, row, idx, rec, swap, label, decode_images, stats, image_kw)
            if pair is None:
                raise PixprefError(
                    f"{file} row {row} (pair index {idx}) is not a usable pair: {', '.join(stats.skipped)}"
                )
            found[idx] = pair
    return [found[i] for i in wanted]


# ----------------------------------------------------------------------------------------------- writer


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("are_different", pa.bool_()), ("best_image_uid", pa.string()), ("caption", pa.string()),
        ("created_at", pa.timestamp("ns")), ("has_label", pa.bool_()), ("image_0_uid", pa.string()),
        ("image_0_url", pa.string()), ("image_1_uid", pa.string()), ("image_1_url", pa.string()),
        ("jpg_0", pa.binary()), ("jpg_1", pa.binary()), ("label_0", pa.float64()), ("label_1", pa.float64()),
        ("model_0", pa.string()), ("model_1", pa.string()), ("ranking_id", pa.int64()),
        ("user_id", pa.int64()), ("num_example_per_prompt", pa.int64()),
    ])


def _uid(data: bytes) -> str:
    return str(uuid.UUID(bytes=hashlib.sha1(data).digest()[:16], version=5))


class PickapicWriter:
    """Write rows (dicts) to a parquet file in the Pick-a-Pic v2 layout; atomic (temp file, then rename).

    Each row needs ``caption``, ``jpg_0``, ``jpg_1`` (encoded bytes, or an image array / PIL image that is
    encoded as PNG), ``label_0``, ``label_1`` and an integer ``user_id``. Other columns default to:
    image uids from the image bytes, ``best_image_uid`` the winner's uid ("" for a tie), ``are_different``
    from the bytes, ``has_label`` True, ``ranking_id`` the row number, urls/models "", ``created_at``
    1970-01-01, ``num_example_per_prompt`` 1.

        with PickapicWriter("pairs.parquet") as w:
            w.write({"caption": "a red circle", "jpg_0": png0, "jpg_1": png1, "label_0": 1.0,
                     "label_1": 0.0, "user_id": 7})
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False, rows_per_group: int = 256) -> None:
        self.path = check_output_path(path, overwrite)
        self.rows_per_group = rows_per_group
        self.rows_written = 0
        self._buffer: list[dict[str, Any]] = []
        self._ctx: Any = None
        self._writer: Any = None

    def __enter__(self) -> PickapicWriter:
        import pyarrow.parquet as pq

        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(tmp, _schema())
        return self

    def _fill(self, row: dict[str, Any]) -> dict[str, Any]:
        from pixpref.data.images import encode_image

        where = f"row {self.rows_written + len(self._buffer)} for {self.path}"
        unknown = [k for k in row if k not in PICKAPIC_COLUMNS]
        if unknown:
            raise PixprefError(f"{where}: unknown column(s) {', '.join(unknown)}; valid columns: "
                               f"{', '.join(PICKAPIC_COLUMNS)}")
        missing = [k for k in WRITER_REQUIRED if row.get(k) is None]
        if missing:
            raise PixprefError(f"{where}: missing required column(s) {', '.join(missing)}")
        out = dict(row)
        out["jpg_0"] = encode_image(row["jpg_0"], "PNG", f"{where} jpg_0")
        out["jpg_1"] = encode_image(row["jpg_1"], "PNG", f"{where} jpg_1")
        try:
            out["user_id"] = int(row["user_id"])
        except (TypeError, ValueError):
            raise PixprefError(f"{where}: user_id must be an integer (Pick-a-Pic layout), got "
                               f"{row['user_id']!r}") from None
        reason, swap, label = resolve_label(row["label_0"], row["label_1"])
        if reason not in (None, SKIP_TIE):
            raise PixprefError(f"{where}: labels ({row['label_0']}, {row['label_1']}) are invalid; "
                               "valid: (1, 0), (0, 1), (0.5, 0.5)")
        out.setdefault("image_0_uid", _uid(out["jpg_0"]))
        out.setdefault("image_1_uid", _uid(out["jpg_1"]))
        if "best_image_uid" not in out:
            out["best_image_uid"] = "" if reason == SKIP_TIE else out["image_1_uid" if swap else "image_0_uid"]
        out.setdefault("are_different", out["jpg_0"] != out["jpg_1"])
        out.setdefault("has_label", True)
        out.setdefault("ranking_id", self.rows_written + len(self._buffer))
        for key in ("image_0_url", "image_1_url", "model_0", "model_1"):
            out.setdefault(key, "")
        out.setdefault("created_at", dt.datetime(1970, 1, 1))
        out.setdefault("num_example_per_prompt", 1)
        out["label_0"], out["label_1"] = float(row["label_0"]), float(row["label_1"])
        return out

    def write(self, row: dict[str, Any]) -> None:
        if self._writer is None:
            raise PixprefError("PickapicWriter.write() called outside its `with` block")
        self._buffer.append(self._fill(row))
        if len(self._buffer) >= self.rows_per_group:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=_schema())
        self._writer.write_table(table)
        self.rows_written += len(self._buffer)
        self._buffer = []

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        err: BaseException | None = None
        try:
            if exc_type is None:
                self._flush()
        except BaseException as e:  # noqa: BLE001 - re-raised below after the temp file is removed
            err = e
        finally:
            self._writer.close()
            self._writer = None
        if err is not None:
            self._ctx.__exit__(type(err), err, err.__traceback__)  # deletes the temp file
            raise err
        self._ctx.__exit__(exc_type, exc, tb)  # renames on success, deletes the temp file on error


def write_pickapic(rows: Iterable[dict[str, Any]], path: str | Path, *, overwrite: bool = False,
                   rows_per_group: int = 256) -> int:
    """Write ``rows`` to ``path`` in the Pick-a-Pic layout (see :class:`PickapicWriter`); returns the count."""
    with PickapicWriter(path, overwrite=overwrite, rows_per_group=rows_per_group) as w:
        for row in rows:
            w.write(row)
    return w.rows_written
