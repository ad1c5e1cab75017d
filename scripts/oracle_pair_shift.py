"""How far the scorer's pixel oracles move within each kind of renderer pair, per dimension and per feature.

    python scripts/oracle_pair_shift.py [--n 300] [--seed 5] [--content-from pixels|clean] [--json FILE]

For each renderer pair kind of :data:`pixpref.scorer.toylabels.RENDER_KINDS` it renders ``n`` pairs and
prints, per text dimension, the share of pairs whose oracle utilities differ by at least the tie margin
(the pairs that get a decided label) and the mean |difference|; then the mean |difference| of the measured
features the aesthetics oracle reads. In "blur" and "noise" pairs both images show the *same scene*, so
every decided aesthetics label there comes from the measurement moving under the degradation, not from
the scene: the label noise that the Bayes ceiling (which trusts the measurement) does not count. With
``--content-from clean`` (the labels' default, ``ToyLabelConfig.content_from``) aesthetics and alignment are
read on the undegraded renders, as the scorer's training labels are.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

AESTHETIC_FEATURES = ("obj_lightness", "bg_lightness", "size", "cx", "cy")


def shifts(n: int, seed: int, tie_margin: float, content_from: str = "pixels") -> list[dict]:
    from pixpref.scorer.toylabels import ORACLE_DIMENSIONS, RENDER_KINDS, pair_utilities, render_pair
    from pixpref.toyworld.oracle import measure

    rng = np.random.default_rng(seed)
    rows = []
    for kind in RENDER_KINDS:
        prompts, images, clean = zip(*(render_pair(kind, rng, 32, "all") for _ in range(n)), strict=True)
        images, clean, prompts = np.stack(images), np.stack(clean), list(prompts)
        util = pair_utilities(images, prompts, clean if content_from == "clean" else None)
        fa, fb = measure(images[:, 0]), measure(images[:, 1])
        row = {"kind": kind}
        for d in ORACLE_DIMENSIONS:
            diff = np.abs(util[d][:, 0] - util[d][:, 1])
            row[d] = {"decided": float((diff >= tie_margin).mean()), "mean_abs": float(diff.mean())}
        row["features"] = {f: float(np.abs(fa[f] - fb[f]).mean()) for f in AESTHETIC_FEATURES}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300, help="pairs per kind")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--tie-margin", type=float, default=0.05, help="as in configs/scorer/train_toy.yaml")
    p.add_argument("--content-from", choices=["pixels", "clean"], default="pixels",
                   help="read aesthetics and alignment on the shown pixels or on the undegraded renders")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be >= 1")
    from pixpref.scorer.toylabels import ORACLE_DIMENSIONS

    rows = shifts(args.n, args.seed, args.tie_margin, args.content_from)
    head = "".join(f"{d + ' decided':>20}" for d in ORACLE_DIMENSIONS)
    print(f"{'kind':<10}{head}   mean |feature change|: " + " ".join(AESTHETIC_FEATURES))
    for r in rows:
        dims = "".join(f"{r[d]['decided']:>12.2f} ({r[d]['mean_abs']:.3f})" for d in ORACLE_DIMENSIONS)
        feats = " ".join(f"{r['features'][f]:.3f}" for f in AESTHETIC_FEATURES)
        print(f"{r['kind']:<10}{dims}   {feats}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "seed": args.seed, "tie_margin": args.tie_margin,
                       "content_from": args.content_from, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
