"""``pixpref eval``: write an evaluation report of personalized adapters (toy world).

    pixpref eval --config configs/eval/toy.yaml --out runs/eval_toy
    pixpref eval --config configs/eval/tiny.yaml --set data=runs/toy_tiny_data --set users=2 --out /tmp/ev
"""

from __future__ import annotations

import argparse
import shlex


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command."""
    p = subparsers.add_parser(
        "eval",
        help="write an evaluation report of personalized adapters (win rates, curves, figures)",
        description="Judge personalized against base images on the toy world's unseen users (oracle utility "
                    "and preference scorer) and write report.json, report.md and PNG figures to --out.",
    )
    p.add_argument("--config", required=True, metavar="YAML", help="evaluation config, e.g. configs/eval/toy.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config value, e.g. --set users=10 or --set adapters.mine=runs/x/adapter")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: the config's out)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run_eval)


def command_line(args: argparse.Namespace) -> str:
    """The command as a user would type it (recorded in the report)."""
    parts = ["pixpref", "eval", "--config", args.config]
    for item in args.overrides:
        parts += ["--set", item]
    if args.out:
        parts += ["--out", args.out]
    if args.overwrite:
        parts.append("--overwrite")
    return " ".join(shlex.quote(p) for p in parts)


def run_eval(args: argparse.Namespace) -> int:
    from pixpref.config import load_config
    from pixpref.errors import PixprefError
    from pixpref.evaluation.config import EvalConfig
    from pixpref.io_utils import check_output_path

    config = load_config(args.config, EvalConfig, overrides=args.overrides)
    out = args.out or config.out
    if not out:
        raise PixprefError("no output folder: pass --out DIR (or set out in the config)")
    check_output_path(out, args.overwrite)
    config.check_data()
    from pixpref.evaluation.report import evaluate

    report = evaluate(config, out=out, overwrite=args.overwrite, command=command_line(args))
    for name, r in report["adapters"].items():
        line = f"{name}: oracle win rate {r['oracle']['win_rate']:.3f} [{r['oracle']['ci95'][0]:.3f}, " \
               f"{r['oracle']['ci95'][1]:.3f}]"
        if "personal" in r["scorer"]:
            line += f", scorer personal {r['scorer']['personal']['win_rate']:.3f}, agreement " \
                    f"{r['agreement']['personal']['rate']:.3f}"
        print(line)
    print(f"wrote {out}/report.md")
    return 0
