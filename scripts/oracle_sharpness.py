"""How the pixel oracle's sharpness reads at each blur level: the basis of the detail oracle's crisp floor.

    python scripts/oracle_sharpness.py [--n 300] [--seed 0] [--crisp 0.85]

Renders ``n`` random scenes (all shape-colour combinations) at each blur sigma of the renderer's range, with
and without noise, and prints the measured sharpness (mean, std, 10th / 90th percentile) and the share read
as crisp (sharpness >= ``--crisp``). Crisp renders (blur 0) all have the same true sharpness, so their
spread is measurement error; the scorer's detail oracle (:func:`pixpref.scorer.toylabels.oracle_utilities`)
reads everything from ``crisp`` up as fully sharp, so two crisp images do not differ in detail by accident.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

BLURS = (0.0, 0.3, 0.5, 0.8, 1.2, 1.6)  # the renderer's degradations use 0.5 - 1.6
NOISES = (0.0, 0.1)


def measure(n: int, seed: int, crisp: float) -> list[dict]:
    from pixpref.toyworld.oracle import analyse
    from pixpref.toyworld.render import render
    from pixpref.toyworld.scene import sample_scene

    rng = np.random.default_rng(seed)
    rows = []
    for blur in BLURS:
        for noise in NOISES:
            scenes = [sample_scene(rng, combos="all").replace(blur=blur, noise=noise) for _ in range(n)]
            images = np.stack([render(s, 32, np.random.default_rng(seed * 100003 + i)) for i, s in enumerate(scenes)])
            sharp = analyse(images)[0]["sharpness"]
            rows.append({"blur": blur, "noise": noise, "mean": float(sharp.mean()), "std": float(sharp.std()),
                         "p10": float(np.percentile(sharp, 10)), "p90": float(np.percentile(sharp, 90)),
                         "crisp_share": float((sharp >= crisp).mean())})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300, help="scenes per (blur, noise) cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crisp", type=float, default=None, help="crisp floor (default: the detail oracle's)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    if args.n < 2:
        p.error("--n must be >= 2")
    from pixpref.scorer.toylabels import CRISP_SHARPNESS

    crisp = CRISP_SHARPNESS if args.crisp is None else args.crisp
    rows = measure(args.n, args.seed, crisp)
    print(f"{'blur':>5}{'noise':>7}{'mean':>8}{'std':>7}{'p10':>7}{'p90':>7}  share >= {crisp}")
    for r in rows:
        print(f"{r['blur']:>5.1f}{r['noise']:>7.2f}{r['mean']:>8.3f}{r['std']:>7.3f}{r['p10']:>7.3f}{r['p90']:>7.3f}"
              f"  {r['crisp_share']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"crisp": crisp, "n": args.n, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
