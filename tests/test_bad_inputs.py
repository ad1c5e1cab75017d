"""The bad-input corpus: every entry must fail with a clear message and leave no output behind.

CLI entries: exit code 2, exactly one stderr line ``pixpref: error: ...`` naming the problem, no traceback,
and the output path not created. API entries: a :class:`PixprefError` naming the problem. The corpus size is
printed by ``pytest -s -k corpus_size`` (figures for the reliability issue).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pixpref.errors import PixprefError

# ----- files the cases use -----------------------------------------------------------------------------

def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


GOOD = np.full((32, 32, 3), 128, np.uint8)


def make_files(root: Path) -> dict[str, Path]:
    f: dict[str, Path] = {}

    def put(name: str, data: bytes | str) -> None:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        f[name] = p

    good = _png(GOOD)
    put("good.png", good)
    put("truncated.png", good[: len(good) // 2])
    put("empty.png", b"")
    put("text.png", "not an image at all")
    put("random.jpg", bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)))
    # a PNG header claiming 100000 x 100000 pixels (decompression bomb), no real data
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    import zlib

    chunk = b"IHDR" + ihdr
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    put("bomb.png", bomb + b"\x00\x00\x00\x00IEND\xaeB`\x82")
    put("pairs/good_a.png", good)
    put("pairs/good_b.png", good)

    def pairs_file(name: str, lines: list[Any]) -> None:
        put(f"pairs/{name}", "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")

    row = {"prompt": "a red star", "chosen": "good_a.png", "rejected": "good_b.png", "user_id": "u"}
    pairs_file("empty.jsonl", [])
    pairs_file("escape.jsonl", [{**row, "chosen": "../good.png"}])
    pairs_file("absolute.jsonl", [{**row, "chosen": str(root / "good.png")}])
    pairs_file("missing_key.jsonl", [{"prompt": "x", "chosen": "good_a.png"}])
    pairs_file("bad_json.jsonl", ['{"prompt": "x", "chosen": '])
    pairs_file("missing_image.jsonl", [{**row, "chosen": "nope.png"}])
    pairs_file("bad_label.jsonl", [{**row, "label": "yes"}])
    pairs_file("corrupt_image.jsonl", [{**row, "chosen": "../pairs/corrupt.png"}])
    put("pairs/corrupt.png", b"\x89PNG garbage")
    pairs_file("corrupt_in_folder.jsonl", [{**row, "chosen": "corrupt.png"}])
    pairs_file("empty_prompt.jsonl", [{**row, "prompt": ""}])
    pairs_file("good.jsonl", [row])
    # parquet without the Pick-a-Pic columns
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"caption": ["x"], "foo": [1]}), root / "nocols.parquet")
    f["nocols.parquet"] = root / "nocols.parquet"
    put("notparquet.parquet", "PAR1 but not really")
    # embeddings
    from safetensors.torch import save_file

    for name, tensor in {"nan_user.safetensors": torch.full((5, 192), float("nan")),
                         "inf_user.safetensors": torch.full((5, 192), float("inf")),
                         "wide_user.safetensors": torch.zeros((5, 77))}.items():
        save_file({"user_embedding": tensor}, str(root / name))
        f[name] = root / name
    save_file({"something_else": torch.zeros(3)}, str(root / "other.safetensors"))
    f["other.safetensors"] = root / "other.safetensors"
    put("pickle.pt", b"\x80\x04\x95" + b"cos\nsystem\n" * 3)
    put("notjson.json", "{not json")
    # configs
    put("cfg/typo_demo.yaml", "rounds: 4\nnum_imagez: 3\n")
    put("cfg/neg_demo.yaml", "rounds: 0\n")
    put("cfg/notyaml.yaml", "rounds: [1, 2\n")
    put("cfg/list.yaml", "- a\n- b\n")
    put("cfg/nan_demo.yaml", "guidance_scale: .nan\n")
    put("prompts_short.txt", "a red star\n")
    return f


# ----- the corpus --------------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    expected: str  # substring of the message (case-insensitive)
    argv: list[str] | None = None  # CLI case: arguments of `pixpref`
    call: Callable[[dict[str, Path]], Any] | None = None  # API case
    out: str | None = None  # an output path that must not exist afterwards


def _cli(case_id, expected, *argv, out=None):
    return Case(case_id, expected, argv=list(argv), out=out)


def _api(case_id, expected, call):
    return Case(case_id, expected, call=call)


def _scorer():
    from pixpref.scorer.api import PreferenceScorer

    return PreferenceScorer.from_pretrained("toy")


def _encoder():
    from pixpref.personalize.user_encoder import UserEncoder

    return UserEncoder.from_pretrained("toy")


CASES = [
    # --- data files through the CLI ---
    _cli("stats-missing-file", "not found", "data", "stats", "{root}/nope.parquet"),
    _cli("stats-not-parquet", "parquet", "data", "stats", "{root}/notparquet.parquet"),
    _cli("stats-missing-columns", "lacks required pick-a-pic column", "data", "stats", "{root}/nocols.parquet"),
    _cli("stats-jsonl-escape", "..", "data", "stats", "{root}/pairs/escape.jsonl"),
    _cli("stats-jsonl-absolute", "absolute", "data", "stats", "{root}/pairs/absolute.jsonl"),
    _cli("stats-jsonl-missing-key", "rejected", "data", "stats", "{root}/pairs/missing_key.jsonl"),
    _cli("stats-jsonl-bad-json", "json", "data", "stats", "{root}/pairs/bad_json.jsonl"),
    _cli("stats-jsonl-bad-label", "label", "data", "stats", "{root}/pairs/bad_label.jsonl"),
    _cli("stats-zero-batch-rows", "batch", "data", "stats", "{root}/nocols.parquet", "--batch-rows", "0"),
    _cli("stats-unknown-format", "invalid choice", "data", "stats", "{root}/pairs/good.jsonl", "--format", "csv"),
    # --- generate ---
    _cli("generate-unknown-model", "valid", "generate", "--prompt", "a red star", "--model", "sd99", "--out", "{out}", out="{out}"),
    _cli("generate-zero-images", "num-images", "generate", "--prompt", "a red star", "--num-images", "0", "--out", "{out}", out="{out}"),
    _cli("generate-negative-steps", "steps", "generate", "--prompt", "a red star", "--steps", "-3", "--out", "{out}", out="{out}"),
    _cli("generate-empty-prompt", "prompt", "generate", "--prompt", "  ", "--out", "{out}", out="{out}"),
    _cli("generate-nan-guidance", "guidance", "generate", "--prompt", "a red star", "--guidance-scale", "nan", "--out", "{out}", out="{out}"),
    _cli("generate-unknown-scheduler", "invalid choice", "generate", "--prompt", "x", "--scheduler", "plms", "--out", "{out}", out="{out}"),
    _cli("generate-nan-user", "nan", "generate", "--prompt", "a red star", "--user", "{root}/nan_user.safetensors", "--out", "{out}", out="{out}"),
    _cli("generate-inf-user", "inf", "generate", "--prompt", "a red star", "--user", "{root}/inf_user.safetensors", "--out", "{out}", out="{out}"),
    _cli("generate-wide-user", "width", "generate", "--prompt", "a red star", "--user", "{root}/wide_user.safetensors", "--out", "{out}", out="{out}"),
    _cli("generate-not-a-profile", "not a pixpref user profile", "generate", "--prompt", "a red star", "--user", "{root}/other.safetensors", "--out", "{out}", out="{out}"),
    _cli("generate-user-missing", "not found", "generate", "--prompt", "a red star", "--user", "{root}/none.safetensors", "--out", "{out}", out="{out}"),
    _cli("generate-unknown-adapter", "adapter", "generate", "--prompt", "a red star", "--user-pairs", "{root}/pairs/good.jsonl", "--adapter", "ppo", "--out", "{out}", out="{out}"),
    _cli("generate-existing-out", "--overwrite", "generate", "--prompt", "a red star", "--out", "{root}/pairs"),
    _cli("generate-overwrite-foreign-folder", "did not write", "generate", "--prompt", "a red star", "--out", "{root}/pairs", "--overwrite"),
    # --- embed-user ---
    _cli("embed-zero-pairs", "pair", "embed-user", "--pairs", "{root}/pairs/empty.jsonl", "--out", "{out}.safetensors", out="{out}.safetensors"),
    _cli("embed-escape", "..", "embed-user", "--pairs", "{root}/pairs/escape.jsonl", "--out", "{out}.safetensors", out="{out}.safetensors"),
    _cli("embed-missing-image", "not found", "embed-user", "--pairs", "{root}/pairs/missing_image.jsonl", "--out", "{out}.safetensors", out="{out}.safetensors"),
    _cli("embed-corrupt-image", "cannot decode", "embed-user", "--pairs", "{root}/pairs/corrupt_in_folder.jsonl", "--out", "{out}.safetensors", out="{out}.safetensors"),
    _cli("embed-empty-prompt", "prompt", "embed-user", "--pairs", "{root}/pairs/empty_prompt.jsonl", "--out", "{out}.safetensors", out="{out}.safetensors"),
    _cli("embed-unknown-vlm", "valid", "embed-user", "--pairs", "{root}/pairs/good.jsonl", "--vlm", "gpt9", "--out", "{out}.safetensors", out="{out}.safetensors"),
    _cli("embed-k-too-large", "max_pairs", "embed-user", "--pairs", "{root}/pairs/good.jsonl", "--max-pairs", "0", "--out", "{out}.safetensors", out="{out}.safetensors"),
    # --- score ---
    _cli("score-corrupt-image", "cannot read image", "score", "--images", "{root}/truncated.png", "--prompt", "x"),
    _cli("score-zero-byte-image", "empty", "score", "--images", "{root}/empty.png", "--prompt", "x"),
    _cli("score-text-as-image", "cannot read image", "score", "--images", "{root}/text.png", "--prompt", "x"),
    _cli("score-random-bytes", "cannot read image", "score", "--images", "{root}/random.jpg", "--prompt", "x"),
    _cli("score-huge-image", "pixels", "score", "--images", "{root}/bomb.png", "--prompt", "x"),
    _cli("score-unknown-dimension", "valid", "score", "--images", "{root}/good.png", "--prompt", "x", "--dimensions", "beauty"),
    _cli("score-personal-without-user", "user", "score", "--images", "{root}/good.png", "--prompt", "x", "--dimensions", "personal"),
    _cli("score-prompt-count", "prompt", "score", "--images", "{root}/good.png", "{root}/good.png", "--prompts", "{root}/prompts_short.txt"),
    _cli("score-unknown-model", "scorer", "score", "--images", "{root}/good.png", "--prompt", "x", "--model", "hps9"),
    _cli("score-pickle-model", "pickle", "score", "--images", "{root}/good.png", "--prompt", "x", "--model", "{root}/pickle.pt"),
    _cli("score-nan-user", "nan", "score", "--images", "{root}/good.png", "--prompt", "x", "--user", "{root}/nan_user.safetensors"),
    _cli("score-zero-batch", "batch", "score", "--images", "{root}/good.png", "--prompt", "x", "--batch-size", "0"),
    # --- configs ---
    _cli("demo-config-typo", "num_images", "demo", "--config", "{root}/cfg/typo_demo.yaml", "--no-preload"),
    _cli("demo-config-zero-rounds", "rounds", "demo", "--config", "{root}/cfg/neg_demo.yaml", "--no-preload"),
    _cli("demo-config-not-yaml", "yaml", "demo", "--config", "{root}/cfg/notyaml.yaml", "--no-preload"),
    _cli("demo-config-not-mapping", "mapping", "demo", "--config", "{root}/cfg/list.yaml", "--no-preload"),
    _cli("demo-config-nan", "nan", "demo", "--config", "{root}/cfg/nan_demo.yaml", "--no-preload"),
    _cli("demo-set-typo", "valid", "demo", "--set", "roundz=3", "--no-preload"),
    _cli("demo-config-missing", "not found", "demo", "--config", "{root}/cfg/none.yaml", "--no-preload"),
    _cli("pretrain-set-typo", "valid", "pretrain", "toy", "--out", "{out}", "--set", "base.stepz=3", out="{out}"),
    _cli("pretrain-zero-steps", "steps", "pretrain", "toy", "--out", "{out}", "--set", "base.steps=0", out="{out}"),
    _cli("pretrain-unknown-part", "valid options", "pretrain", "toy", "--out", "{out}", "--only", "unet", out="{out}"),
    _cli("render-unknown-shape", "invalid choice", "toyworld", "render", "--shape", "hexagon", "--out", "{out}.png", out="{out}.png"),
    _cli("make-pairs-zero-users", "users", "toyworld", "make-pairs", "--users", "0", "--pairs-per-user", "4", "--out", "{out}", out="{out}"),
    # --- Python API ---
    _api("api-score-nan-array", "nan", lambda f: _scorer().score(np.full((1, 32, 32, 3), np.nan, np.float32), "x")),
    _api("api-score-wrong-mode", "image", lambda f: _scorer().score([np.zeros((32, 32, 5), np.uint8)], "x")),
    _api("api-score-zero-images", "image", lambda f: _scorer().score([], "x")),
    _api("api-score-unknown-dimension", "valid", lambda f: _scorer().score([GOOD], "x", dimensions=["colourfulness"])),
    _api("api-user-wrong-width", "width", lambda f: _scorer().score([GOOD], "x", dimensions=["personal"], user=torch.zeros(4, 64))),
    _api("api-encoder-zero-pairs", "zero pairs", lambda f: _encoder().encode_one([])),
    _api("api-encoder-too-many-pairs", "max_pairs", lambda f: _encoder().encode_one([("a red star", GOOD, GOOD)] * 9)),
    _api("api-encoder-bad-image", "image", lambda f: _encoder().encode_one([("a red star", "not-a-file.png", GOOD)])),
    _api("api-unknown-loss", "valid", lambda f: __import__("pixpref.personalize.losses", fromlist=["get_loss"]).get_loss("ppo")),
    _api("api-interpolate-shapes", "shapes", lambda f: __import__("pixpref.personalize.pipeline", fromlist=["x"]).interpolate_users(torch.zeros(2, 3), torch.zeros(3, 3), 0.5)),
    _api("api-interpolate-alpha", "[0, 1]", lambda f: __import__("pixpref.personalize.pipeline", fromlist=["x"]).interpolate_users(torch.zeros(2, 3), torch.zeros(2, 3), 1.5)),
    _api("api-unknown-model-name", "valid", lambda f: __import__("pixpref.models.diffusion", fromlist=["x"]).load_pipeline("stable-cascade")),
    _api("api-read-json", "not valid json", lambda f: __import__("pixpref.io_utils", fromlist=["x"]).read_json(f["notjson.json"])),
    _api("api-scorer-pickle", "pickle", lambda f: __import__("pixpref.scorer.api", fromlist=["x"]).PreferenceScorer.from_pretrained(f["pickle.pt"])),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    return root, make_files(root)


def _fill(text: str, root: Path, out: Path) -> str:
    return text.replace("{root}", str(root)).replace("{out}", str(out))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_cleanly(case, files, tmp_path, capsys):
    root, f = files
    out = tmp_path / "out"
    if case.argv is not None:
        from pixpref.cli import main

        before = sorted(p.name for p in tmp_path.iterdir())
        try:
            rc = main([_fill(a, root, out) for a in case.argv])
        except SystemExit as e:  # argparse usage errors
            rc = e.code
        err = capsys.readouterr().err.strip()
        assert rc == 2, f"exit code {rc}; stderr: {err}"
        assert "Traceback" not in err
        last = err.splitlines()[-1] if err else ""
        if "invalid choice" not in case.expected:
            assert len(err.splitlines()) == 1 and last.startswith("pixpref: error:"), err
        assert case.expected.lower() in last.lower(), f"expected {case.expected!r} in: {last}"
        if case.out:
            assert not Path(_fill(case.out, root, out)).exists(), "a partial output was left behind"
        assert sorted(p.name for p in tmp_path.iterdir()) == before, "files were written"
    else:
        with pytest.raises(PixprefError) as err:
            case.call(f)
        assert case.expected.lower() in str(err.value).lower(), str(err.value)


def test_corpus_size():
    kinds = {"cli": sum(c.argv is not None for c in CASES), "api": sum(c.call is not None for c in CASES)}
    print(f"bad-input corpus: {len(CASES)} distinct inputs ({kinds})")
    assert len({c.id for c in CASES}) == len(CASES) >= 50


def test_no_unsafe_loading_in_the_source():
    """Every torch.load passes weights_only=True; nothing sets trust_remote_code=True."""
    import re

    repo = Path(__file__).resolve().parent.parent
    offenders = []
    for path in [*repo.glob("pixpref/**/*.py"), *repo.glob("train/*.py"), *repo.glob("scripts/*.py"),
                 *repo.glob("benchmarks/*.py")]:
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.name}: {m.group(0)}")
        if re.search(r"trust_remote_code\s*=\s*True", text):
            offenders.append(f"{path.name}: trust_remote_code=True")
    assert not offenders, offenders
