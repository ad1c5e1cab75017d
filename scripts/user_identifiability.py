"""How well can k pairwise choices identify a synthetic toy-world user? Ceilings for personalization.

    python scripts/user_identifiability.py --data runs/toy_ppd_data [--k 1 2 4 8] [--json OUT.json]

For each unseen user of a ``make-pairs`` folder, the first k non-tie pairs are the context and the rest are
held out. Each predictor scores a held-out pair by ``w . (basis(chosen) - basis(rejected))`` (the oracle's
utility basis) and counts a hit when the sign says "chosen"; the accuracy is the mean over users:

- ``true_weights``: the user's own weights (the ceiling set by the Bradley-Terry label noise alone);
- ``contrast``: the mean basis contrast of the k context pairs (the pixel oracle's direct reading);
- ``posterior``: the Bayes posterior mean of the *training* users' weights given the k context labels under
  Bradley-Terry with each training user's temperature (what an encoder trained on the population can hope
  to infer from k pairs: the ceiling for the scorer's personal dimension and for few-shot personalization).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np


def pair_differences(data: Path, pattern: str) -> dict[str, np.ndarray]:
    """user id -> (n, W) basis(chosen) - basis(rejected), ties dropped, in file order."""
    from pixpref.data.pickapic import iter_pickapic
    from pixpref.toyworld.users import pair_differences as differences

    by_user = collections.defaultdict(list)
    for f in sorted(data.glob(pattern)):
        for p in iter_pickapic(f, tie_policy="drop"):
            by_user[p.user_id].append(p)
    return {uid: differences(np.stack([p.chosen_rgb() for p in pairs]), np.stack([p.rejected_rgb() for p in pairs]))
            for uid, pairs in by_user.items()}


def ceilings(unseen: dict[str, np.ndarray], weights: dict[str, np.ndarray], train_w: np.ndarray,
             train_t: np.ndarray, k: int) -> dict[str, float]:
    from pixpref.toyworld.users import posterior_weights

    acc = collections.defaultdict(list)
    for uid, d in unseen.items():
        if len(d) <= k:
            continue
        ctx, test = d[:k], d[k:]

        def hit(w, test=test):
            return float(np.mean(test @ w > 0))

        acc["true_weights"].append(hit(weights[uid]))
        acc["contrast"].append(hit(ctx.mean(0)))
        acc["posterior"].append(hit(posterior_weights(ctx, train_w, train_t)))
    return {name: float(np.mean(v)) for name, v in acc.items()} | {"users": len(acc["true_weights"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/toy_ppd_data", help="a pixpref toyworld make-pairs folder")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from pixpref.errors import PixprefError
    from pixpref.toyworld.users import load_users, training_prior

    data = Path(args.data)
    if not (data / "users.json").is_file():
        raise PixprefError(f"{data} is not a make-pairs folder (no users.json)")
    users_file = load_users(data / "users.json")
    weights = {str(u.id): u.weights_vector() for u in users_file.users}
    _, train_w, train_t = training_prior(users_file.users)
    unseen = pair_differences(data, "unseen-*.parquet")
    result = {"data": str(data), "population": users_file.meta.get("population"),
              "by_k": {k: ceilings(unseen, weights, train_w, train_t, k) for k in args.k}}
    print(f"{'k':>3} {'true weights':>13} {'contrast':>9} {'posterior':>10} {'users':>6}")
    for k, r in result["by_k"].items():
        print(f"{k:>3} {r['true_weights']:>13.3f} {r['contrast']:>9.3f} {r['posterior']:>10.3f} {r['users']:>6}")
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
