"""Copy a trained adapter folder into the package as fp16 (how the shipped toy adapters are made).

    python scripts/ship_adapter.py runs/ppd_dpo/adapter dpo     # -> pixpref/pretrained/toy/adapter_dpo
    python scripts/ship_adapter.py runs/ppd_inpo/adapter inpo
    python scripts/ship_adapter.py runs/ppd_dpo_2000/checkpoints/checkpoint_1200/user_adapter dpo   # a kept checkpoint
    python scripts/ship_adapter.py runs/ppd_dpo/adapter dpo --scale 0.5   # save a tuned default user_scale

Recipe of the shipped adapters (2026-11-23), after the shipped base model:
    pixpref toyworld make-pairs --users 200 --pairs-per-user 40 --seed 0 --source model --model toy \
        --per-combo 16 --steps 15 --pool runs/toy_pool.npz --out runs/toy_ppd_data
    accelerate launch --config_file configs/accelerate/cpu.yaml train/train_ppd.py --config configs/toy/ppd_dpo.yaml
    accelerate launch --config_file configs/accelerate/cpu.yaml train/train_ppd.py --config configs/toy/ppd_inpo.yaml
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

FILES = ("adapter_config.json", "user_encoder.json")
WEIGHTS = "user_adapter.safetensors"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("adapter", help="adapter folder written by train/train_ppd.py (OUT/adapter)")
    ap.add_argument("name", choices=["dpo", "inpo"])
    ap.add_argument("--scale", type=float, default=None,
                    help="default user_scale saved in adapter_config.json (tune it on held-out users with "
                         "pixpref eval --set user_offset=20 --set user_scale=X); default: keep the run's")
    args = ap.parse_args(argv)
    if args.scale is not None and not (0.0 < args.scale < 10.0):
        print(f"ship_adapter: --scale must be in (0, 10), got {args.scale}", file=sys.stderr)
        return 2
    from safetensors.torch import load_file, save_file

    src = Path(args.adapter)
    dst = Path(__file__).resolve().parent.parent / "pixpref" / "pretrained" / "toy" / f"adapter_{args.name}"
    missing = [f for f in (*FILES, WEIGHTS) if not (src / f).is_file()]
    if missing:
        print(f"ship_adapter: {src} lacks {', '.join(missing)}", file=sys.stderr)
        return 2
    dst.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        shutil.copy(src / f, dst / f)
    if args.scale is not None:
        config = json.loads((dst / "adapter_config.json").read_text())
        config["scale"] = args.scale
        (dst / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = load_file(str(src / WEIGHTS))
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(dst / WEIGHTS))
    # the run's training log ships too (the report's training curves); for a kept checkpoint
    # (RUN/checkpoints/checkpoint_N/user_adapter) it is the run's log up to step N
    step_file = src.parent / "step.json"
    run_dir = src.parent.parent.parent if step_file.is_file() else src.parent
    log = run_dir / "train_log.jsonl"
    if log.is_file():
        last = json.loads(step_file.read_text())["step"] if step_file.is_file() else None
        lines = [line for line in log.read_text().splitlines()
                 if line.strip() and (last is None or json.loads(line).get("step", 0) <= last)]
        (dst / "train_log.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {dst} ({(dst / WEIGHTS).stat().st_size / 1e3:.0f} kB, {len(state)} tensors, fp16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
