"""``pixpref pretrain toy``: retrain the embedded toy-world models from scratch, reproducibly.

    HF_HUB_OFFLINE=1 pixpref pretrain toy --out runs/pretrain [--only base,vlm,clip] [--overwrite]
        [--set base.steps=100 ...]

Each part ``P`` (``base``, ``vlm``, ``clip``) lives in ``pixpref.pretrain.P`` with a ``PretrainConfig``
dataclass and ``run(out_dir, cfg) -> dict`` of final metrics, which writes into ``out_dir/P``. Its settings come from
``configs/toy/pretrain_P.yaml``; ``--set P.key=value`` overrides them. Part ``P`` writes into
``DIR/P`` (the shipped folders are ``pixpref/pretrained/toy/P``). A part whose module is not available
is skipped with a message. A summary of all parts' metrics goes to ``DIR/pretrain_summary.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from pixpref.errors import PixprefError, unknown_name

PARTS = ("base", "vlm", "clip")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "toy"


def parse_only(text: str | None) -> list[str]:
    """``"base,clip"`` -> ``["base", "clip"]`` (in canonical order); None -> all parts."""
    if text is None:
        return list(PARTS)
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise PixprefError(f"--only is empty; valid parts: {', '.join(PARTS)}")
    for name in names:
        if name not in PARTS:
            raise unknown_name("pretraining part", name, PARTS)
    return [p for p in PARTS if p in names]


def split_overrides(items: list[str] | None) -> dict[str, list[str]]:
    """``["base.steps=10"]`` -> ``{"base": ["steps=10"]}``."""
    out: dict[str, list[str]] = {p: [] for p in PARTS}
    for item in items or []:
        part, _, rest = item.partition(".")
        if part not in PARTS or not rest:
            raise PixprefError(f"--set {item!r} must start with a part name ({', '.join(PARTS)}), e.g. base.steps=100")
        out[part].append(rest)
    return out


def validate_part(part: str, overrides: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """Load part ``part``'s config with its overrides (raises on unknown keys or bad values)."""
    from pixpref.config import load_config

    try:
        mod = importlib.import_module(f"pixpref.pretrain.{part}")
    except ModuleNotFoundError:
        return
    cfg_path = config_dir / f"pretrain_{part}.yaml"
    load_config(cfg_path if cfg_path.is_file() else None, mod.PretrainConfig, overrides)


def run_part(part: str, out_root: Path, overrides: list[str], overwrite: bool, config_dir: Path = CONFIG_DIR):
    """Run one part; returns its metrics, or None when its module is not available."""
    from pixpref.config import load_config
    from pixpref.io_utils import check_output_path

    mod_name = f"pixpref.pretrain.{part}"
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name == mod_name:
            print(f"[pretrain] skipping {part}: {mod_name} is not available")
            return None
        raise
    cfg_path = config_dir / f"pretrain_{part}.yaml"
    cfg = load_config(cfg_path if cfg_path.is_file() else None, mod.PretrainConfig, overrides)
    out_dir = check_output_path(out_root / part, overwrite)
    print(f"[pretrain] {part}: config {cfg_path if cfg_path.is_file() else '(defaults)'} -> {out_dir}")
    return mod.run(out_root, cfg)  # each part writes into out_root/<part>


def cmd_pretrain_toy(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parts = parse_only(args.only)
    overrides = split_overrides(args.set)
    out_root = Path(args.out)
    # refuse early, before hours of training, if an output exists
    if not args.overwrite:
        for part in parts:
            if (out_root / part).exists():
                raise PixprefError(f"output {out_root / part} already exists; pass --overwrite to replace it")
    for part in parts:  # a typo in any part's settings stops the run before anything is written
        validate_part(part, overrides[part], Path(args.config_dir))
    out_root.mkdir(parents=True, exist_ok=True)
    summary = {}
    for part in parts:
        metrics = run_part(part, out_root, overrides[part], args.overwrite, Path(args.config_dir))
        if metrics is not None:
            summary[part] = metrics
    (out_root / "pretrain_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="pretrain the embedded toy-world models from scratch")
    sub = p.add_subparsers(dest="pretrain_command", metavar="WORLD", required=True)
    toy = sub.add_parser("toy", help="retrain the toy base model, VLM and CLIP (fixed seeds)",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    toy.add_argument("--out", required=True, help="output folder; part P goes to OUT/P")
    toy.add_argument("--only", default=None, help=f"comma-separated parts to run (default all): {','.join(PARTS)}")
    toy.add_argument("--overwrite", action="store_true", help="replace existing part folders")
    toy.add_argument("--set", action="append", metavar="PART.KEY=VALUE", help="override a config value, repeatable")
    toy.add_argument("--config-dir", default=str(CONFIG_DIR), help="folder with pretrain_<part>.yaml files")
    toy.set_defaults(func=cmd_pretrain_toy)
