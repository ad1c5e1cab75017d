"""Throughput of the preference scorer vs a bare open_clip forward of the same backbone, side by side.

    python benchmarks/bench_scorer.py [--model toy] [--batch 64] [--repeats 5] [--threads 1]

Prints images/second of ``PreferenceScorer.score`` (all text dimensions, preprocessing included) and of
``clip.encode_image`` + ``clip.encode_text`` on the same preprocessed batch, and their ratio: what the
condition module costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="toy")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from pixpref.scorer.api import PreferenceScorer
    from pixpref.scorer.conditions import TEXT_DIMENSIONS

    torch.set_num_threads(args.threads)
    from pixpref.errors import PixprefError

    try:  # e.g. sd15 on a machine without its weights
        scorer = PreferenceScorer.from_pretrained(args.model)
    except PixprefError as e:
        print(f"skipped: {e}")
        return 0
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
    prompts = ["a red star"] * args.batch
    model = scorer.model
    pixels = model.preprocess(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    ids = model.tokenize(prompts)

    def bare():
        with torch.no_grad():
            model.clip.encode_image(pixels)
            model.clip.encode_text(ids)

    def scored():
        scorer.score(images, prompts, dimensions=list(TEXT_DIMENSIONS), batch_size=args.batch, progress=False)

    def timed(fn):
        fn()
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    t_bare, t_score = timed(bare), timed(scored)
    info = {"device": "cpu", "cpu": platform.machine(), "threads": torch.get_num_threads(), "model": args.model,
            "batch": args.batch, "dimensions": list(TEXT_DIMENSIONS)}
    print(json.dumps(info))
    print(f"bare open_clip image+text forward: {args.batch / t_bare:8.1f} images/s")
    print(f"PreferenceScorer.score ({len(TEXT_DIMENSIONS)} dims):  {args.batch / t_score:8.1f} images/s")
    print(f"score time / bare forward time: {t_score / t_bare:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
