"""``pixpref pretrain toy``: retrain the embedded toy-world models from scratch, reproducibly.

    HF_HUB_OFFLINE=1 pixpref pretrain toy --out runs/pretrain [--only base,vlm,clip] [--jobs 2] [--resume]
        [--stages N] [--overwrite] [--set base.steps=100 ...]

Each part ``P`` (``base``, ``vlm``, ``clip``) lives in ``pixpref.pretrain.P`` with a ``PretrainConfig``
dataclass and ``run(out_dir, cfg) -> dict`` of final metrics, which writes into ``out_dir/P``. Its settings come from
``configs/toy/pretrain_P.yaml``; ``--set P.key=value`` overrides them. Part ``P`` writes into
``DIR/P`` (the shipped folders are ``pixpref/pretrained/toy/P``). A part whose module is not available
is skipped with a message. A summary of all parts' metrics and wall times goes to ``DIR/pretrain_summary.json``.

Stages. A part's YAML may end with ``stages:``, a list of mappings: each is one more training stage that starts
from the previous stage's weights (``init_from`` is set for it) with the file's settings updated by the mapping.
The file's own settings are stage 1. So the one command above reproduces a shipped multi-stage recipe.
``--set`` overrides apply to every stage; ``--stages N`` runs only the first N stages of each part. Stages
before the last write into ``DIR/.stages/P/stageK`` (removed when the part is done); their logs and metrics are
copied into ``DIR/P`` with a ``_stageK`` suffix, as in the shipped folders. ``--resume`` reuses a finished stage
whose saved config equals the one it would run.

``--jobs 2`` trains parts in parallel processes (base on one, then vlm and clip on the other), each part's output
in ``DIR/logs/P.log``. Every part uses one torch thread by default, so two jobs fill a 2-core machine.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pixpref.errors import PixprefError, unknown_name

PARTS = ("base", "vlm", "clip")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "toy"
STAGES_KEY = "stages"
STAGE_DIR = ".stages"
LOG_NAMES = ("loss_log.jsonl", "train_log.csv", "metrics.json", "pretrain_config.yaml")


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
        if rest.split("=", 1)[0].strip() == STAGES_KEY:
            raise PixprefError(f"--set {item!r}: stages are set in the YAML file; use --stages N to run fewer")
        out[part].append(rest)
    return out


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _part_module(part: str):
    mod_name = f"pixpref.pretrain.{part}"
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name == mod_name:
            return None
        raise


def stage_configs(part: str, overrides: list[str], config_dir: Path = CONFIG_DIR, max_stages: int | None = None):
    """The validated ``PretrainConfig`` of each stage of ``part`` (without ``init_from`` chaining for stages
    after the first, which :func:`run_part` fills in). Raises on unknown keys or bad values, naming the stage."""
    from pixpref.config import apply_overrides, from_dict, read_yaml

    mod = _part_module(part)
    if mod is None:
        return []
    cfg_path = config_dir / f"pretrain_{part}.yaml"
    data = read_yaml(cfg_path) if cfg_path.is_file() else {}
    stages = data.pop(STAGES_KEY, None) or []
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        raise PixprefError(f"{cfg_path}: '{STAGES_KEY}' must be a list of mappings (one per stage after the first)")
    settings = [data] + [_merge(data, s) for s in stages]
    if max_stages is not None:
        settings = settings[:max_stages]
    cfgs = []
    for k, stage in enumerate(settings, start=1):
        if k > 1 and "init_from" in stages[k - 2]:
            raise PixprefError(f"{cfg_path} stage {k}: do not set init_from; a stage starts from the previous one")
        try:
            cfgs.append(from_dict(mod.PretrainConfig, apply_overrides(copy.deepcopy(stage), overrides)))
        except PixprefError as e:
            where = f"{cfg_path.name} stage {k}" if len(settings) > 1 else cfg_path.name
            raise PixprefError(f"{where}: {e}") from None
    return cfgs


def _check_part_output(folder: Path, overwrite: bool, resume: bool) -> Path:
    """An existing part folder needs --overwrite, except an unfinished one (no metrics.json) under --resume."""
    if folder.exists() and not overwrite and not (resume and not (folder / "metrics.json").is_file()):
        hint = "" if resume else " (or --resume, if a run was interrupted)"
        raise PixprefError(f"output {folder} already exists; pass --overwrite to replace it{hint}")
    return folder


def _stage_done(folder: Path, cfg) -> bool:
    """A finished stage: metrics written and the same settings saved beside them."""
    from pixpref.config import to_dict

    saved = folder / "pretrain_config.yaml"
    if not (folder / "metrics.json").is_file() or not saved.is_file():
        return False
    import yaml

    return yaml.safe_load(saved.read_text()) == yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _save_stage_config(folder: Path, cfg) -> None:
    from pixpref.config import save_config

    save_config(cfg, folder / "pretrain_config.yaml")


def run_part(part: str, out_root: Path, overrides: list[str], overwrite: bool, config_dir: Path = CONFIG_DIR,
             max_stages: int | None = None, resume: bool = False):
    """Run every stage of one part; returns the last stage's metrics (with per-stage wall times), or None when
    the part's module is not available."""
    import dataclasses

    mod = _part_module(part)
    if mod is None:
        print(f"[pretrain] skipping {part}: pixpref.pretrain.{part} is not available")
        return None
    cfgs = stage_configs(part, overrides, config_dir, max_stages)
    out_dir = _check_part_output(out_root / part, overwrite, resume)
    stage_root = out_root / STAGE_DIR / part
    n = len(cfgs)
    walls, prev = [], None
    for k, cfg in enumerate(cfgs, start=1):
        if prev is not None:
            cfg = dataclasses.replace(cfg, init_from=str(prev))
        root = out_root if k == n else stage_root / f"stage{k}"
        folder = root / part
        if k < n and resume and _stage_done(folder, cfg):
            print(f"[pretrain] {part} stage {k}/{n}: reusing {folder}")
            walls.append(0.0)
            prev = folder
            continue
        if k < n and folder.exists():
            shutil.rmtree(folder)
        print(f"[pretrain] {part} stage {k}/{n} -> {folder}" + (f" (from {prev})" if prev else ""))
        t0 = time.perf_counter()
        metrics = mod.run(root, cfg)  # each part writes into root/<part>
        walls.append(round(time.perf_counter() - t0, 1))
        _save_stage_config(folder, cfg)
        prev = folder
    for k in range(1, n):  # earlier stages' logs beside the final weights, as in the shipped folders
        folder = stage_root / f"stage{k}" / part
        for name in LOG_NAMES:
            if (folder / name).is_file():
                stem, dot, ext = name.partition(".")
                shutil.copy2(folder / name, out_dir / f"{stem}_stage{k}.{ext}")
    if n > 1:
        shutil.rmtree(stage_root, ignore_errors=True)
        if stage_root.parent.is_dir() and not any(stage_root.parent.iterdir()):
            stage_root.parent.rmdir()
    metrics = dict(metrics)
    metrics["stages"] = n
    metrics["stage_wall_s"] = walls
    metrics["part_wall_s"] = round(sum(walls), 1)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _child_command(part: str, args: argparse.Namespace, overrides: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pixpref", "pretrain", "toy", "--out", str(args.out), "--only", part,
           "--config-dir", str(args.config_dir), "--no-summary"]
    cmd += ["--overwrite"] if args.overwrite else []
    cmd += ["--resume"] if args.resume else []
    cmd += ["--stages", str(args.stages)] if args.stages else []
    for item in overrides:
        cmd += ["--set", f"{part}.{item}"]
    return cmd


def _run_parallel(parts: list[str], args: argparse.Namespace, overrides: dict[str, list[str]]) -> dict:
    """Each part in its own process, ``args.jobs`` at a time; returns {part: metrics or None}."""
    log_dir = Path(args.out) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    def one(part: str):
        log = log_dir / f"{part}.log"
        print(f"[pretrain] {part}: started, output in {log}", flush=True)
        with open(log, "w") as f:
            rc = subprocess.call(_child_command(part, args, overrides[part]), stdout=f, stderr=subprocess.STDOUT)
        if rc != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise PixprefError(f"pretraining part {part} failed (exit {rc}): {tail[0]}; see {log}")
        print(f"[pretrain] {part}: done", flush=True)
        return json.loads((Path(args.out) / part / "metrics.json").read_text())

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {part: pool.submit(one, part) for part in parts}
        return {part: fut.result() for part, fut in futures.items()}


def cmd_pretrain_toy(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parts = parse_only(args.only)
    overrides = split_overrides(args.set)
    out_root = Path(args.out)
    if args.jobs < 1:
        raise PixprefError(f"--jobs must be >= 1, got {args.jobs}")
    if args.stages is not None and args.stages < 1:
        raise PixprefError(f"--stages must be >= 1, got {args.stages}")
    # refuse early, before hours of training, if an output exists
    for part in parts:
        _check_part_output(out_root / part, args.overwrite, args.resume)
    plan = {}
    for part in parts:  # a typo in any part's (or stage's) settings stops the run before anything is written
        plan[part] = len(stage_configs(part, overrides[part], Path(args.config_dir), args.stages))
    print("[pretrain] plan: " + ", ".join(f"{p} {n} stage{'s' if n != 1 else ''}" for p, n in plan.items()))
    out_root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.jobs > 1 and len(parts) > 1:
        results = _run_parallel(parts, args, overrides)
    else:
        results = {part: run_part(part, out_root, overrides[part], args.overwrite, Path(args.config_dir),
                                  args.stages, args.resume) for part in parts}
    summary = {part: m for part, m in results.items() if m is not None}
    if args.no_summary:  # a child of --jobs: its metrics are in DIR/<part>/metrics.json
        return 0
    summary["total_wall_s"] = round(time.perf_counter() - t0, 1)
    summary["jobs"] = args.jobs
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
    toy.add_argument("--set", action="append", metavar="PART.KEY=VALUE",
                     help="override a config value in every stage, repeatable")
    toy.add_argument("--stages", type=int, default=None, metavar="N",
                     help="run only the first N stages of each part (default: all in the YAML)")
    toy.add_argument("--resume", action="store_true", help="reuse finished stages with the same settings")
    toy.add_argument("--jobs", type=int, default=1, help="parts trained in parallel processes (default 1)")
    toy.add_argument("--config-dir", default=str(CONFIG_DIR), help="folder with pretrain_<part>.yaml files")
    toy.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)
    toy.set_defaults(func=cmd_pretrain_toy)
