"""Pick-a-Pic v2 parquet: streaming reader, filters, tie policy, image decoding policy, writer."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import BLUE, PICKAPIC_V2_TYPES, RED, encode, pickapic_rows, solid, write_raw_pickapic

from pixpref.data.images import decode_rgb, load_rgb
from pixpref.data.pairs import ReadStats
from pixpref.data.pickapic import (
    PICKAPIC_COLUMNS,
    iter_pickapic,
    iter_pickapic_meta,
    take_pickapic,
    write_pickapic,
)
from pixpref.errors import PixprefError


def _is_red(img: np.ndarray) -> bool:
    r, g, b = img.reshape(-1, 3).astype(int).mean(0)
    return r > 150 and g < 80 and b < 80


def _expected_indices(rows: list[dict], tie_policy: str) -> list[int]:
    """Which rows should survive, worked out from the row spec (independently of the reader)."""
    out = []
    for i, r in enumerate(rows):
        if not r.get("has_label", True) or r["jpg_0"] == r["jpg_1"] or r["caption"] == "corrupt":
            continue
        if r["label_0"] == 0.5 and tie_policy == "drop":
            continue
        out.append(i)
    return out


def test_columns_match_published_layout():
    assert list(PICKAPIC_COLUMNS) == list(PICKAPIC_V2_TYPES)


def test_streams_in_batches_and_equals_unstreamed_read(pickapic_file: Path):
    small, whole = ReadStats(), ReadStats()
    streamed = list(iter_pickapic(pickapic_file, batch_rows=4, stats=small))
    at_once = list(iter_pickapic(pickapic_file, batch_rows=10_000, stats=whole))
    assert small.batches > 1 and whole.batches == 1
    assert [p.index for p in streamed] == [p.index for p in at_once]
    for a, b in zip(streamed, at_once, strict=True):
        assert (a.prompt, a.user_id, a.label) == (b.prompt, b.user_id, b.label)
        assert np.array_equal(a.chosen, b.chosen) and np.array_equal(a.rejected, b.rejected)
    # and both equal what a plain full-table read says
    table = pq.read_table(pickapic_file).to_pylist()
    assert len(table) == small.rows_read == 18
    expected = _expected_indices(pickapic_rows(), "drop")
    assert [p.index for p in streamed] == expected
    assert [p.prompt for p in streamed] == [table[i]["caption"] for i in expected]
    assert [p.user_id for p in streamed] == [str(table[i]["user_id"]) for i in expected]


def test_filters_are_counted_by_reason(pickapic_file: Path):
    stats = ReadStats()
    pairs = list(iter_pickapic(pickapic_file, batch_rows=5, stats=stats))
    assert stats.skipped == {"tie_dropped": 1, "corrupt_image": 1, "not_labelled": 1, "identical_images": 1}
    assert stats.pairs == len(pairs) == 14
    assert stats.rows_read == stats.pairs + sum(stats.skipped.values())


def test_winner_is_always_chosen(pickapic_file: Path):
    pairs = {p.prompt: p for p in iter_pickapic(pickapic_file, batch_rows=5)}
    swapped = pairs["image 1 wins"]  # label_0 == 0: image 1 (red) won
    assert _is_red(swapped.chosen) and not _is_red(swapped.rejected)
    for p in pairs.values():
        assert p.label == 1.0
        assert np.abs(p.rejected.astype(int) - np.array(BLUE)).max() < 40  # loser always blue


def test_tie_policy_soft_keeps_tie_with_half_label(pickapic_file: Path):
    stats = ReadStats()
    pairs = list(iter_pickapic(pickapic_file, tie_policy="soft", stats=stats))
    ties = [p for p in pairs if p.is_tie]
    assert len(ties) == 1 and ties[0].label == 0.5 and ties[0].prompt == "a tie"
    assert stats.ties_kept == 1 and "tie_dropped" not in stats.skipped
    assert [p.index for p in pairs] == _expected_indices(pickapic_rows(), "soft")
    with pytest.raises(PixprefError, match="tie policy 'keep'.*drop, soft"):
        list(iter_pickapic(pickapic_file, tie_policy="keep"))


def test_special_modes_decode_to_rgb(pickapic_file: Path):
    pairs = {p.prompt: p for p in iter_pickapic(pickapic_file)}
    for p in pairs.values():
        for img in (p.chosen, p.rejected):
            assert img.dtype == np.uint8 and img.shape == (8, 8, 3)
    rgba = pairs["rgba"].chosen
    assert (rgba[:4] == 255).all()  # transparent half composited on white
    assert tuple(rgba[6, 0]) == RED
    assert (pairs["grey"].chosen == 128).all()
    assert _is_red(pairs["palette"].chosen)
    assert (pairs["16 bit"].chosen == 255).all()  # 65535 -> 255, and image 1 won so it is chosen


def test_decode_policies_directly():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)  # fully transparent
    assert (decode_rgb(encode(rgba)) == 255).all()
    assert tuple(decode_rgb(encode(rgba), alpha="drop")[0, 0]) == (10, 20, 30)
    mid = np.full((4, 4), 32768, np.uint16)
    assert (decode_rgb(encode(mid, mode="I;16")) == 128).all()
    big = encode(solid(RED, 64))
    assert decode_rgb(big, size=16).shape == (16, 16, 3)
    wide = encode(np.zeros((20, 40, 3), np.uint8))
    assert decode_rgb(wide, size=10).shape == (10, 10, 3)


def test_bad_images_raise_naming_the_source():
    with pytest.raises(PixprefError, match=r"row 7 jpg_0: cannot decode image"):
        decode_rgb(b"not an image at all", "x.parquet row 7 jpg_0")
    truncated = encode(solid(RED, 64), "JPEG")[:200]
    with pytest.raises(PixprefError, match="row 3.*cannot decode"):
        decode_rgb(truncated, "row 3")
    with pytest.raises(PixprefError, match="empty"):
        decode_rgb(b"", "row 4")
    with pytest.raises(PixprefError, match=r"64x64 = 4096 pixels, over the limit of 1000"):
        decode_rgb(encode(solid(RED, 64)), "row 5", max_pixels=1000)
    with pytest.raises(PixprefError, match="not found"):
        load_rgb(Path("/nonexistent/img.png"), "line 2")


def test_missing_column_names_columns_and_file(tmp_path: Path):
    path = write_raw_pickapic(pickapic_rows()[:3], tmp_path / "broken.parquet", drop=("label_1", "user_id"))
    with pytest.raises(PixprefError) as e:
        list(iter_pickapic(path))
    msg = str(e.value)
    assert "label_1" in msg and "user_id" in msg and "broken.parquet" in msg
    # metadata-only reads do not need the image columns
    no_images = write_raw_pickapic(pickapic_rows()[:3], tmp_path / "meta.parquet", drop=("jpg_0", "jpg_1"))
    assert len(list(iter_pickapic_meta(no_images, tie_policy="soft"))) == 3
    with pytest.raises(PixprefError, match="jpg_0, jpg_1"):
        list(iter_pickapic(no_images))


def test_unreadable_files(tmp_path: Path):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(PixprefError, match="empty.parquet is empty"):
        list(iter_pickapic(empty))
    junk = tmp_path / "junk.parquet"
    junk.write_text("hello, not parquet")
    with pytest.raises(PixprefError, match="junk.parquet is not a readable parquet file"):
        list(iter_pickapic(junk))
    (tmp_path / "nothing_here").mkdir()
    with pytest.raises(PixprefError, match="nothing_here holds no .parquet files"):
        list(iter_pickapic(tmp_path / "nothing_here"))


def test_folder_of_shards_and_random_access(tmp_path: Path):
    rows = pickapic_rows()
    folder = tmp_path / "shards"
    folder.mkdir()
    write_raw_pickapic(rows[:10], folder / "train-00000.parquet", row_group_size=3)
    write_raw_pickapic(rows[10:], folder / "train-00001.parquet", row_group_size=3)
    stats = ReadStats()
    pairs = list(iter_pickapic(folder, batch_rows=4, stats=stats))
    assert stats.files == 2
    assert [p.index for p in pairs] == _expected_indices(rows, "drop")
    metas = list(iter_pickapic_meta(folder, batch_rows=4))
    # metadata mode cannot see the corrupt image (no image columns read); otherwise identical
    assert [m.index for m in metas if m.prompt != "corrupt"] == [p.index for p in pairs]
    wanted = [pairs[-1].index, pairs[0].index, pairs[5].index]
    taken = take_pickapic(folder, wanted)
    assert [p.index for p in taken] == wanted
    by_index = {p.index: p for p in pairs}
    for p in taken:
        assert np.array_equal(p.chosen, by_index[p.index].chosen) and p.prompt == by_index[p.index].prompt
    with pytest.raises(PixprefError, match="tie_dropped"):
        take_pickapic(folder, [2])
    with pytest.raises(PixprefError, match="out of range"):
        take_pickapic(folder, [999])


def test_writer_round_trip_and_atomic(tmp_path: Path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(8)]
    rows = [
        {"caption": f"c{i}", "jpg_0": imgs[2 * i], "jpg_1": imgs[2 * i + 1], "label_0": l0, "label_1": 1 - l0,
         "user_id": 5 + i}
        for i, l0 in enumerate([1.0, 0.0, 0.5, 1.0])
    ]
    out = tmp_path / "toy.parquet"
    assert write_pickapic(rows, out, rows_per_group=2) == 4
    schema = pq.ParquetFile(out).schema_arrow
    assert schema.names == list(PICKAPIC_COLUMNS)
    assert str(schema.field("user_id").type) == "int64" and str(schema.field("jpg_0").type) == "binary"
    pairs = list(iter_pickapic(out, tie_policy="soft", batch_rows=3))
    assert [p.label for p in pairs] == [1.0, 1.0, 0.5, 1.0]
    assert np.array_equal(pairs[1].chosen, imgs[3])  # image 1 won row 1
    assert np.array_equal(pairs[0].chosen, imgs[0]) and pairs[3].user_id == "8"
    table = pq.read_table(out).to_pylist()
    assert table[1]["best_image_uid"] == table[1]["image_1_uid"] and table[2]["best_image_uid"] == ""
    # refuses to overwrite; a failing write leaves neither the target nor a temp file
    with pytest.raises(PixprefError, match="already exists"):
        write_pickapic(rows, out)
    bad = tmp_path / "bad.parquet"
    with pytest.raises(PixprefError, match=r"labels \(0.7, 0.3\) are invalid"):
        write_pickapic(rows + [dict(rows[0], label_0=0.7, label_1=0.3)], bad)
    with pytest.raises(PixprefError, match="user_id must be an integer"):
        write_pickapic([dict(rows[0], user_id="alice")], bad)
    with pytest.raises(PixprefError, match="unknown column.*colour"):
        write_pickapic([dict(rows[0], colour="red")], bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.parquet"]
    assert io.BytesIO(table[0]["jpg_0"]).read(8) == b"\x89PNG\r\n\x1a\n"


def test_default_pixel_limit_refuses_huge_image():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (4100, 4100)).save(buf, format="PNG")  # tiny file, 16.8 M pixels
    with pytest.raises(PixprefError, match=r"row 9 jpg_1: image is 4100x4100 = 16810000 pixels, over the limit"):
        decode_rgb(buf.getvalue(), "row 9 jpg_1")


def test_iter_pairs_from_config_resizes(pickapic_file: Path):
    import pixpref.data as data

    cfg = data.DataConfig(path=str(pickapic_file), image_size=16, tie_policy="soft", batch_rows=3)
    pairs = list(data.iter_pairs(cfg))
    assert len(pairs) == 15 and all(p.chosen.shape == (16, 16, 3) for p in pairs)
    lazy = next(data.iter_pairs(cfg, decode_images=False))
    assert isinstance(lazy.chosen, bytes) and lazy.chosen_rgb(size=16).shape == (16, 16, 3)
    with pytest.raises(PixprefError, match="data.path is empty"):
        list(data.iter_pairs(data.DataConfig()))


def test_package_import_is_light():
    import subprocess
    import sys

    code = ("import sys, pixpref.data, pixpref.data.cli; "
            "print([m for m in ('pyarrow', 'PIL', 'numpy', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_glob_of_shards_selects_files(tmp_path):
    from pixpref.data.pairs import detect_format
    from pixpref.data.pickapic import pickapic_files
    from pixpref.errors import PixprefError

    for name in ("train-00000-of-00002.parquet", "train-00001-of-00002.parquet", "unseen-00000-of-00001.parquet"):
        (tmp_path / name).write_bytes(b"PAR1")
    files = pickapic_files(tmp_path / "train-*.parquet")
    assert [f.name for f in files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert detect_format(str(tmp_path / "train-*.parquet")) == "pickapic"
    with pytest.raises(PixprefError, match="no parquet files match"):
        pickapic_files(tmp_path / "test-*.parquet")
