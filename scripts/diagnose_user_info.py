"""How much a few pairwise choices tell about a synthetic user (toy world), and how much of it the VLM keeps.

    python scripts/diagnose_user_info.py --data runs/toy_ppd_data \
        --cache runs/toy_ppd_data/user_emb_image_contrast.safetensors

1. Information in the pairs: for each unseen user, the mean over k pairs of the oracle's feature difference
   (chosen - rejected) in the utility basis, against the user's true weight vector (cosine; 1 = the pairs
   point straight at the user's taste), for k = 4, 8, 32.
2. What the user embedding keeps: ridge regression from the training cache's embeddings (one per user and
   chunk) to the true weight vectors, fit on 80% of the training users and scored on the other 20% (R^2
   per weight, averaged over weights that vary; cosine of prediction and truth).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np


def pair_information(data: Path, ks: list[int]) -> dict[int, float]:
    from pixpref.data.pickapic import iter_pickapic
    from pixpref.toyworld.users import load_users, pair_contrast

    users = {str(u.id): u for u in load_users(data / "users.json").users}
    by_user = collections.defaultdict(list)
    for f in sorted(data.glob("unseen-*.parquet")):
        for p in iter_pickapic(f, tie_policy="drop"):
            by_user[p.user_id].append(p)
    out = {}
    for k in ks:
        cos = []
        for uid, pairs in by_user.items():
            sel = pairs[:k]
            chosen = np.stack([p.chosen_rgb() for p in sel])
            rejected = np.stack([p.rejected_rgb() for p in sel])
            d = pair_contrast(chosen, rejected)
            w = users[uid].weights_vector()
            cos.append(float(d @ w / (np.linalg.norm(d) * np.linalg.norm(w) + 1e-9)))
        out[k] = float(np.mean(cos))
    return out


def embedding_probe(data: Path, cache_path: Path, lam: float, seed: int) -> dict[str, float]:
    from safetensors.torch import load_file

    from pixpref.toyworld.users import load_users

    users = {str(u.id): u for u in load_users(data / "users.json").users}
    cache = load_file(str(cache_path))
    rows = [(k.split("/")[0], v.float().flatten().numpy()) for k, v in cache.items() if k.split("/")[0] in users]
    groups = np.array([g for g, _ in rows])
    x = np.stack([v for _, v in rows])
    y = np.stack([users[g].weights_vector() for g in groups])
    ids = np.unique(groups)
    test_ids = set(np.random.default_rng(seed).choice(ids, len(ids) // 5, replace=False))
    test = np.array([g in test_ids for g in groups])
    mu, sd = x[~test].mean(0), x[~test].std(0) + 1e-6
    xs = (x - mu) / sd
    a, y_mean = xs[~test], y[~test].mean(0)
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (y[~test] - y_mean))
    pred = xs[test] @ w + y_mean
    var = ((y[test] - y[test].mean(0)) ** 2).sum(0)
    active = var > 1e-9
    r2 = 1 - ((pred - y[test]) ** 2).sum(0)[active] / var[active]
    cos = [p @ t / (np.linalg.norm(p) * np.linalg.norm(t) + 1e-9) for p, t in zip(pred, y[test])]
    return {"r2_mean": float(r2.mean()), "cosine": float(np.mean(cos)), "n_train": int((~test).sum()),
            "n_test": int(test.sum()), "lambda": lam}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="runs/toy_ppd_data")
    ap.add_argument("--cache", default="runs/toy_ppd_data/user_emb_image_contrast.safetensors")
    ap.add_argument("--k", nargs="+", type=int, default=[4, 8, 32])
    ap.add_argument("--ridge", type=float, default=1000.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    data = Path(args.data)
    report = {"pair_information_cosine": pair_information(data, args.k)}
    if Path(args.cache).is_file():
        report["embedding_probe"] = embedding_probe(data, Path(args.cache), args.ridge, args.seed)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
