"""Print a Markdown "Results" section from an evaluation report (and benchmark JSON files), for the README.

    python scripts/readme_results.py runs/eval_toy/report.json --bench runs/bench_ppd_step.json

The report is what ``pixpref eval`` writes (report.json); a benchmark file is ``{"info": {...}, "rows":
{name: {metric: value}}, "ratios": {name: value}}`` as ``benchmarks/bench_ppd_step.py --json`` writes.
Figures are linked under ``--figures`` (default: the report's folder).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def f3(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def number(x) -> str:
    """A benchmark value: three significant digits, whole numbers from 100 up."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return "-" if x is None else str(x)
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def rate(result: dict | None) -> str:
    if result is None:
        return "-"
    low, high = result["ci95"]
    return f"{result['win_rate']:.3f} [{low:.3f}, {high:.3f}]"


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows), ""]


def report_section(report: dict, figures: str) -> list[str]:
    s = report["setup"]
    date = report["date"][:10]
    lines = [
        "## Results", "",
        f"Measured {date} with `{report['command']}` ({report['seconds']:.0f} s wall time). "
        f"{s['users']} unseen synthetic users x {len(s['prompts'])} prompts x {s['images_per_prompt']} images "
        f"= {s['comparisons']} comparisons per adapter, each personalized image against the base image from the "
        f"same noise ({s['steps']} steps, k = {s['k']} examples per user). Judges: the oracle (the user's exact "
        "utility) and the preference scorer's `personal` dimension; 95% Wilson intervals; ties count half.", "",
    ]
    rows = []
    for name, r in report["adapters"].items():
        agree = r["agreement"].get("personal")
        rows.append([name, rate(r["oracle"]), rate(r["scorer"].get("personal")), f3(agree["rate"]) if agree else "-",
                     f"{r['adherence']['base']:.3f} -> {r['adherence']['personal']:.3f}"])
    lines += table(["adapter", "win rate over base (oracle)", "win rate (scorer personal)", "judges agree",
                    "prompt adherence base -> personalized"], rows)
    for name, r in report["adapters"].items():
        control = r.get("mismatched_users")
        if control:
            lines += [f"Control ({name}): the same images made from another user's embedding (user i gets user "
                      f"i + {control['shift']}'s), judged by the true user: {rate(control['oracle'])}; "
                      f"matched - mismatched = {control['gap']:+.3f}.", ""]
    dims = [d for d in next(iter(report["adapters"].values()))["scorer"] if d != "personal"]
    if dims:
        rows = [[name, *(f"{r['scorer'][d]['win_rate']:.3f} ({r['scorer'][d]['mean_delta']:+.3f})" for d in dims)]
                for name, r in report["adapters"].items()]
        lines += ["Quality vs base on the scorer's other dimensions: win rate (mean score change).", "",
                  *table(["adapter", *dims], rows)]
    points = report["few_shot"]["points"]
    if points:
        lines += [f"Few-shot curve ({report['few_shot']['adapter']}, oracle win rate): "
                  + "; ".join(f"k={p['k']}: {rate(p['oracle'])}" for p in points) + ".", ""]
    summary = (report.get("interpolation") or {}).get("summary") or {}
    if summary.get("users"):
        lines += [f"Interpolation ({report['interpolation']['adapter']}, user a's embedding -> user b's, "
                  f"{summary['users']} users' own utilities): monotone {f3(summary['monotone'])}, right direction "
                  f"end to end {f3(summary['right_direction'])}, mean change {summary['mean_change']:+.3f}"
                  + (f", no step significantly the wrong way {f3(summary['monotone_within_noise'])}"
                     if "monotone_within_noise" in summary else "")
                  + f" (pairs: {report['interpolation'].get('pairing', 'index')}).", ""]
    if report["training"]:
        rows = [[name, log["summary"]["last_step"], f"{log['summary'].get('wall_seconds', 0):.0f}",
                 f3(log["summary"].get("final_implicit_acc"))] for name, log in report["training"].items()]
        lines += table(["training run", "steps", "wall s", "final implicit acc"], rows)
    cc = report.get("checkpoint_curves")
    if cc:
        t = cc["target"]
        rows = [[name, ", ".join(f"{st}: {w:.3f}" for st, w in zip(c["step"], c["win_rate"])),
                 t["runs"][name]["steps"] if t["runs"][name]["steps"] is not None else "not reached",
                 "-" if t["runs"][name]["wall_seconds"] is None else f"{t['runs'][name]['wall_seconds']:.0f}"]
                for name, c in cc["curves"].items()]
        lines += [f"Win rate of kept checkpoints ({cc['users']} unseen users, {cc['comparisons']} comparisons "
                  f"each; oracle judge) and steps to reach {t['target']:.2f}:", "",
                  *table(["run", "step: win rate", "steps to target", "wall s to target"], rows)]
        for pair, ratio in t["ratios"].items():
            lines += [f"Ratio {pair} to reach {t['target']:.2f}: steps {f3(ratio['steps'])}, "
                      f"wall-clock {f3(ratio['wall'])}.", ""]
    if report.get("figures"):
        lines += [" ".join(f"![{name}]({figures}/{file})" for name, file in report["figures"].items()), ""]
    for note in report.get("notes", []):
        lines += [f"Note: {note}", ""]
    return lines


def bench_section(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    lines = [f"Benchmark `{path}`" + (f" ({', '.join(f'{k} {v}' for k, v in data['info'].items())})"
                                       if isinstance(data.get("info"), dict) else "") + ":", ""]
    rows = data.get("rows")
    if isinstance(rows, dict) and rows:
        metrics = list(dict.fromkeys(m for r in rows.values() for m in r))
        lines += table(["row", *metrics], [[name, *(number(r.get(m)) for m in metrics)] for name, r in rows.items()])
    for name, value in (data.get("ratios") or {}).items():
        lines.append(f"- {name}: {value:.2f}" if value is not None else f"- {name}: n/a (target not reached)")
    return lines + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", help="report.json written by pixpref eval")
    ap.add_argument("--bench", nargs="*", default=[], help="benchmark JSON files")
    ap.add_argument("--figures", default=None, help="folder the figure links point to (default: the report's)")
    args = ap.parse_args(argv)
    path = Path(args.report)
    if not path.is_file():
        print(f"readme_results: {path} not found", file=sys.stderr)
        return 2
    report = json.loads(path.read_text())
    lines = report_section(report, args.figures or str(path.parent))
    for bench in args.bench:
        lines += bench_section(Path(bench))
    print("\n".join(lines).rstrip() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
