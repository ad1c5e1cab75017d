"""`pixpref toyworld render` and `pixpref toyworld make-pairs` through pixpref.cli.main."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pixpref.cli import main
from pixpref.data.pickapic import PICKAPIC_COLUMNS


def test_render_grid(tmp_path, capsys):
    out = tmp_path / "grid.png"
    rc = main(["toyworld", "render", "--n", "6", "--seed", "1", "--shape", "star", "--colour", "red",
               "--ncols", "3", "--upscale", "1", "--out", str(out)])
    assert rc == 0
    img = Image.open(out)
    assert img.size == (3 * 34 + 2, 2 * 34 + 2)  # 32 px tiles with 2 px padding
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temp files left


def test_render_refuses_existing_output_without_overwrite(tmp_path, capsys):
    out = tmp_path / "grid.png"
    out.write_bytes(b"keep me")
    assert main(["toyworld", "render", "--n", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"keep me"
    assert main(["toyworld", "render", "--n", "2", "--size", "64", "--out", str(out), "--overwrite"]) == 0
    assert Image.open(out).size[0] > 64


@pytest.mark.parametrize("flag,value,valid", [("--shape", "blob", "circle"), ("--colour", "crimson", "magenta")])
def test_unknown_shape_or_colour_exits_2_listing_options(tmp_path, capsys, flag, value, valid):
    with pytest.raises(SystemExit) as exc:
        main(["toyworld", "render", flag, value, "--out", str(tmp_path / "g.png")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert value in err and valid in err
    assert not (tmp_path / "g.png").exists()


def test_bad_numbers_exit_2(tmp_path, capsys):
    assert main(["toyworld", "render", "--n", "0", "--out", str(tmp_path / "g.png")]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err
    assert main(["toyworld", "make-pairs", "--users", "0", "--pairs-per-user", "2", "--out",
                 str(tmp_path / "p")]) == 2
    assert "--users must be >= 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_make_pairs_writes_parquet_and_users(tmp_path, capsys):
    out = tmp_path / "pairs"
    args = ["toyworld", "make-pairs", "--users", "5", "--pairs-per-user", "3", "--seed", "7", "--out", str(out)]
    assert main(args) == 0
    assert "15 pairs from 5 users" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == ["manifest.json", "train-00000-of-00001.parquet", "unseen-00000-of-00001.parquet",
                     "users.json"]
    table = pq.read_table(out / "train-00000-of-00001.parquet")
    assert tuple(table.column_names) == PICKAPIC_COLUMNS
    assert table.num_rows == 12
    users = json.loads((out / "users.json").read_text())["users"]
    assert len(users) == 5 and sum(u["split"] == "unseen" for u in users) == 1
    unseen_ids = {u["id"] for u in users if u["split"] == "unseen"}
    assert set(pq.read_table(out / "unseen-00000-of-00001.parquet")["user_id"].to_pylist()) == unseen_ids

    # same seed, same data; existing output needs --overwrite
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    before = (out / "train-00000-of-00001.parquet").read_bytes()
    assert main(args + ["--overwrite"]) == 0
    assert pq.read_table(out / "train-00000-of-00001.parquet").equals(pq.read_table(io.BytesIO(before)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs"]  # no temp folders left
