"""The hand-made JSONL + image files format: round trip and per-line validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import encode, solid

from pixpref.data.jsonl import iter_jsonl, write_jsonl
from pixpref.data.pairs import PreferencePair, ReadStats
from pixpref.errors import PixprefError


def _pairs(n: int = 5) -> list[PreferencePair]:
    rng = np.random.default_rng(1)
    return [
        PreferencePair(prompt=f"prompt {i}", chosen=rng.integers(0, 256, (6, 7, 3), dtype=np.uint8),
                       rejected=rng.integers(0, 256, (6, 7, 3), dtype=np.uint8), user_id=f"u{i % 2}",
                       label=0.5 if i == 3 else 1.0)
        for i in range(n)
    ]


def test_round_trip(tmp_path: Path):
    pairs = _pairs()
    out = tmp_path / "set" / "pairs.jsonl"
    assert write_jsonl(pairs, out) == 5
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["chosen"] == "pairs_images/000000_chosen.png" and lines[3]["label"] == 0.5
    stats = ReadStats()
    back = list(iter_jsonl(out, tie_policy="soft", stats=stats))
    assert len(back) == 5 and stats.ties_kept == 1
    for a, b in zip(pairs, back, strict=True):
        assert (a.prompt, a.user_id, a.label) == (b.prompt, b.user_id, b.label)
        assert np.array_equal(a.chosen, b.chosen) and np.array_equal(a.rejected, b.rejected)  # PNG: lossless
    dropped = list(iter_jsonl(out, tie_policy="drop", stats=(s := ReadStats())))
    assert [p.index for p in dropped] == [0, 1, 2, 4] and s.skipped == {"tie_dropped": 1}
    lazy = next(iter_jsonl(out, decode_images=False))
    assert isinstance(lazy.chosen, Path) and np.array_equal(lazy.chosen_rgb(), pairs[0].chosen)
    with pytest.raises(PixprefError, match="already exists"):
        write_jsonl(pairs, out)


def test_writer_failure_leaves_no_jsonl(tmp_path: Path):
    out = tmp_path / "p.jsonl"
    bad = _pairs(2) + [{"prompt": "x", "chosen": np.zeros((3, 3, 3), np.uint8)}]
    with pytest.raises(PixprefError, match="missing key.*rejected"):
        write_jsonl(bad, out)
    assert not out.exists() and not list(tmp_path.glob(".p.jsonl*"))


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(encode(solid((255, 0, 0))))
    (tmp_path / "img" / "b.png").write_bytes(encode(solid((0, 0, 255))))
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return tmp_path


GOOD = '{"prompt": "p", "chosen": "img/a.png", "rejected": "img/b.png", "user_id": "ann"}'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "p", "chosen": "img/a.png"', "line 2: not valid JSON"),
        ('["p", "img/a.png"]', "line 2: expected a JSON object"),
        ('{"prompt": "p", "chosen": "img/a.png"}', "line 2: missing key.*rejected"),
        ('{"prompt": "p", "chosen": "img/a.png", "rejected": "img/b.png", "usr": 1}', "unknown key.*usr"),
        ('{"prompt": "p", "chosen": "img/a.png", "rejected": "img/zzz.png"}', "line 2: 'rejected' image file not found"),
        ('{"prompt": "p", "chosen": "/etc/passwd", "rejected": "img/b.png"}', "line 2: 'chosen' path.*is absolute"),
        ('{"prompt": "p", "chosen": "../a.png", "rejected": "img/b.png"}', r"line 2: 'chosen' path.*leaves the folder"),
        ('{"prompt": "p", "chosen": "img/a.png", "rejected": "img/b.png", "label": 0.3}', "line 2: 'label' must be"),
        ('{"prompt": "", "chosen": "img/a.png", "rejected": "img/b.png"}', "line 2: 'prompt' must be"),
        ('{"prompt": "p", "chosen": "img/a.png", "rejected": "img/a.png"}', "line 2: 'chosen' and 'rejected' are the same"),
        ('{"prompt": "p", "chosen": "img/broken.png", "rejected": "img/b.png"}', "line 2 chosen.*cannot decode"),
    ],
)
def test_bad_lines_name_the_line(tmp_path: Path, line: str, message: str):
    root = _folder(tmp_path)
    path = root / "pairs.jsonl"
    path.write_text(GOOD + "\n" + line + "\n")
    with pytest.raises(PixprefError, match=message):
        list(iter_jsonl(path))


def test_empty_and_missing_files(tmp_path: Path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(PixprefError, match="e.jsonl is empty"):
        list(iter_jsonl(empty))
    blank = tmp_path / "b.jsonl"
    blank.write_text("\n\n")
    with pytest.raises(PixprefError, match="holds no records"):
        list(iter_jsonl(blank))
    with pytest.raises(PixprefError, match="not found"):
        list(iter_jsonl(tmp_path / "missing.jsonl"))
