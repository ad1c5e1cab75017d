"""``pixpref data stats``: one JSON object on success, exit code 2 with one line on bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import pickapic_rows, write_raw_pickapic

from pixpref.cli import main
from pixpref.data.jsonl import write_jsonl


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["data", "stats", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_stats_on_parquet(pickapic_file: Path, capsys):
    rc, out, err = _run(capsys, str(pickapic_file), "--batch-rows", "4")
    assert rc == 0, err
    result = json.loads(out)  # exactly one JSON object
    assert result["format"] == "pickapic" and result["rows"] == 18
    assert result["pairs"] == 16 and result["ties"] == 1 and result["users"] == 3
    assert result["skipped"] == {"not_labelled": 1, "identical_images": 1}
    assert result["pairs_per_user"] == {"min": 5, "median": 5.0, "max": 6}


def test_stats_check_images_and_drop(pickapic_file: Path, capsys):
    rc, out, _ = _run(capsys, str(pickapic_file.parent), "--check-images", "--tie-policy", "drop", "--k", "5")
    assert rc == 0
    result = json.loads(out)
    assert result["pairs"] == 14 and result["ties"] == 0
    assert result["skipped"] == {"corrupt_image": 1, "identical_images": 1, "not_labelled": 1, "tie_dropped": 1}
    assert result["pairs_per_user"] == {"min": 4, "median": 5.0, "max": 5}
    assert result["users_with_at_least_k"] == {"k": 5, "users": 2}


def test_stats_on_jsonl(tmp_path: Path, capsys):
    import numpy as np

    img = np.zeros((4, 4, 3), np.uint8)
    rows = [{"prompt": f"p{i}", "chosen": img, "rejected": img + 1 + i, "user_id": f"u{i % 2}",
             "label": 0.5 if i == 0 else 1.0} for i in range(5)]
    write_jsonl(rows, tmp_path / "pairs.jsonl")
    rc, out, _ = _run(capsys, str(tmp_path / "pairs.jsonl"))
    result = json.loads(out)
    assert rc == 0 and result["format"] == "jsonl"
    assert (result["pairs"], result["users"], result["ties"]) == (5, 2, 1)


def _file(name: str, content: bytes):
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(content)
        return folder / name

    return make


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.parquet", "not found"),
        (_file("e.parquet", b""), "e.parquet is empty"),
        (_file("x.parquet", b"nope"), "not a readable parquet file"),
        (lambda p: write_raw_pickapic(pickapic_rows()[:2], p / "m.parquet", drop=("caption",)),
         "m.parquet lacks required Pick-a-Pic column.*caption"),
        (_file("e.jsonl", b""), "e.jsonl is empty"),
        (_file("b.jsonl", b"{oops\n"), "line 1: not valid JSON"),
        (_file("f.txt", b"\x00\x01"), "cannot tell the format"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys, make, message):
    path = make(tmp_path)
    rc, out, err = _run(capsys, str(path))
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pixpref: error:")
    assert re.search(message, lines[0]), lines[0]
