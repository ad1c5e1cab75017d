"""Shared test fixtures. Keep this small: helpers used by several test files only."""

from __future__ import annotations

import datetime as dt
import io
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def encode(arr: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    """Encode an array with PIL (``mode`` e.g. 'RGBA', 'L', 'P', 'I;16')."""
    from PIL import Image

    img = Image.fromarray(arr)  # uint16 (H, W) -> 'I;16'
    if mode and img.mode != mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def solid(rgb: tuple[int, int, int], size: int = 8) -> np.ndarray:
    """(size, size, 3) uint8 image of one colour."""
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (size, size, 3)).copy()


# Pick-a-Pic v2 column layout and types, spelled out independently of pixpref's writer.
PICKAPIC_V2_TYPES = {
    "are_different": "bool", "best_image_uid": "string", "caption": "string", "created_at": "timestamp",
    "has_label": "bool", "image_0_uid": "string", "image_0_url": "string", "image_1_uid": "string",
    "image_1_url": "string", "jpg_0": "binary", "jpg_1": "binary", "label_0": "float64",
    "label_1": "float64", "model_0": "string", "model_1": "string", "ranking_id": "int64",
    "user_id": "int64", "num_example_per_prompt": "int64",
}


def write_raw_pickapic(rows: list[dict], path: Path, row_group_size: int = 1000,
                       drop: tuple[str, ...] = ()) -> Path:
    """Write ``rows`` (caption, jpg_0, jpg_1, label_0, label_1, user_id, optional has_label/are_different)
    with pyarrow directly in the Pick-a-Pic v2 layout; ``drop`` leaves columns out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"bool": pa.bool_(), "string": pa.string(), "timestamp": pa.timestamp("ns"),
             "binary": pa.binary(), "float64": pa.float64(), "int64": pa.int64()}
    full = []
    for i, r in enumerate(rows):
        full.append({
            "are_different": r.get("are_different", r["jpg_0"] != r["jpg_1"]),
            "best_image_uid": f"uid-{i}-best", "caption": r["caption"], "created_at": dt.datetime(2023, 5, 1),
            "has_label": r.get("has_label", True), "image_0_uid": f"uid-{i}-0", "image_0_url": "https://x/0",
            "image_1_uid": f"uid-{i}-1", "image_1_url": "https://x/1", "jpg_0": r["jpg_0"], "jpg_1": r["jpg_1"],
            "label_0": r["label_0"], "label_1": r["label_1"], "model_0": "sdxl", "model_1": "sd21",
            "ranking_id": 1000 + i, "user_id": r["user_id"], "num_example_per_prompt": 1,
        })
    schema = pa.schema([(k, types[v]) for k, v in PICKAPIC_V2_TYPES.items() if k not in drop])
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k not in drop} for r in full], schema=schema)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)


def pickapic_rows() -> list[dict]:
    """18 rows covering every case: swap, tie, corrupt, unlabelled, identical, RGBA, L, P, I;16, JPEG.

    Winners are always RED, losers BLUE, so tests can check that ``chosen`` is the winner.
    """
    red, blue = encode(solid(RED)), encode(solid(BLUE))
    rows = [
        dict(caption="a red square", jpg_0=red, jpg_1=blue, label_0=1.0, label_1=0.0, user_id=1),
        dict(caption="image 1 wins", jpg_0=blue, jpg_1=red, label_0=0.0, label_1=1.0, user_id=1),
        dict(caption="a tie", jpg_0=red, jpg_1=encode(solid(GREEN)), label_0=0.5, label_1=0.5, user_id=1),
        dict(caption="corrupt", jpg_0=encode(solid(RED), "JPEG")[:40], jpg_1=blue, label_0=1.0, label_1=0.0,
             user_id=2),
        dict(caption="unlabelled", jpg_0=red, jpg_1=blue, label_0=0.0, label_1=0.0, user_id=2,
             has_label=False),
        dict(caption="identical", jpg_0=red, jpg_1=red, label_0=1.0, label_1=0.0, user_id=2),
    ]
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = RED
    rgba[..., 3] = 255
    rgba[:4, :, 3] = 0  # top half transparent -> white under the default policy
    rows.append(dict(caption="rgba", jpg_0=encode(rgba), jpg_1=blue, label_0=1.0, label_1=0.0, user_id=2))
    grey = np.full((8, 8), 128, np.uint8)
    rows.append(dict(caption="grey", jpg_0=encode(grey), jpg_1=blue, label_0=1.0, label_1=0.0, user_id=3))
    pal = encode(solid(RED), mode="P")
    rows.append(dict(caption="palette", jpg_0=pal, jpg_1=blue, label_0=1.0, label_1=0.0, user_id=3))
    deep = np.full((8, 8), 65535, np.uint16)
    rows.append(dict(caption="16 bit", jpg_0=blue, jpg_1=encode(deep, mode="I;16"), label_0=0.0, label_1=1.0,
                     user_id=3))
    for i in range(8):  # plain JPEG rows to give users enough pairs
        rows.append(dict(caption=f"prompt {i % 5}", jpg_0=encode(solid(RED), "JPEG"),
                         jpg_1=encode(solid(BLUE), "JPEG"), label_0=1.0, label_1=0.0, user_id=1 + i % 3))
    return rows


@pytest.fixture
def pickapic_file(tmp_path: Path) -> Path:
    """A parquet file in the exact Pick-a-Pic v2 layout, 18 rows in row groups of 5."""
    return write_raw_pickapic(pickapic_rows(), tmp_path / "train-00000-of-00001.parquet", row_group_size=5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_app(tmp_path_factory):
    """The Gradio demo on the shipped toy model, served on 127.0.0.1 (images shown 3x: 96 px)."""
    from pixpref.demo.app import create_demo
    from pixpref.demo.cli import launch
    from pixpref.demo.engine import DemoConfig, DemoEngine

    cfg = DemoConfig(display_size=96, num_images=4, steps=10, concurrency_limit=2)
    engine = DemoEngine(cfg)
    demo = create_demo(engine, workdir=tmp_path_factory.mktemp("profiles"))
    port = _free_port()
    launch(demo, cfg, "127.0.0.1", port, prevent_thread_lock=True)
    yield {"url": f"http://127.0.0.1:{port}/", "engine": engine, "demo": demo}
    demo.close()
