"""Time to turn a new user's 4 pairwise choices into a user embedding: cold, warm and cached.

    python benchmarks/bench_user_embedding.py [--vlm toy|/path/to/local/vlm] [--pairs 4] [--repeats 10] [--threads 1]

cold: load the VLM + processor and encode one user (what the first request of a fresh demo pays);
warm: encode another user with the VLM already loaded; cached: read the embedding back from a training
cache file (what the trainer pays per step). Prints the machine, the figures, the cold/cached and
warm/cached ratios, and the peak resident memory. A ``--vlm`` folder that does not exist is skipped with
a message (e.g. a LLaVA-OneVision path on a machine without the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vlm", default="toy")
    ap.add_argument("--pooling", default="image_contrast_all_layers")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.vlm != "toy" and not Path(args.vlm).is_dir():
        print(f"skipped: VLM folder {args.vlm} not found on this machine (put the weights there to benchmark it)")
        return 0

    import numpy as np
    import torch

    from pixpref.personalize.embeddings import UserEmbeddingCache
    from pixpref.personalize.user_encoder import UserEncoder, UserEncoderConfig
    from pixpref.toyworld.render import render_batch
    from pixpref.toyworld.scene import sample_scene

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    def user_pairs():
        scenes = [sample_scene(rng) for _ in range(2 * args.pairs)]
        imgs = render_batch(scenes)
        return [(scenes[2 * i].prompt(0), imgs[2 * i], imgs[2 * i + 1]) for i in range(args.pairs)]

    config = UserEncoderConfig(vlm=args.vlm, pooling=args.pooling)
    start = time.perf_counter()
    encoder = UserEncoder.from_pretrained(args.vlm, config)
    emb = encoder.encode_one(user_pairs())
    cold = time.perf_counter() - start

    warm_times = []
    for _ in range(args.repeats):
        pairs = user_pairs()
        start = time.perf_counter()
        encoder.encode_one(pairs)
        warm_times.append(time.perf_counter() - start)
    warm = statistics.median(warm_times)

    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache.safetensors"
        save_file({UserEmbeddingCache.key(u, 0): emb.clone() for u in range(200)}, str(path))
        cached_times = []
        for r in range(args.repeats):
            start = time.perf_counter()
            cache = UserEmbeddingCache.load(path)
            cache.get(r % 200, 0)
            cached_times.append(time.perf_counter() - start)
    cached = statistics.median(cached_times)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    info = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "device": "cuda" if torch.cuda.is_available() else "cpu", "torch_threads": torch.get_num_threads(),
            "vlm": args.vlm, "pooling": args.pooling, "pairs": args.pairs, "tokens": list(emb.shape)}
    rows = {"cold (load + encode)": cold, "warm (encode)": warm, "cached (load file + get)": cached}
    print(json.dumps(info))
    print(f"{'what':<26} {'seconds':>10}")
    for name, value in rows.items():
        print(f"{name:<26} {value:>10.4f}")
    print(f"cold / cached {cold / cached:.0f}x, warm / cached {warm / cached:.0f}x; peak RSS {peak_mb:.0f} MB")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "info": info, "rows": {k: {"seconds": v, "peak_rss_mb": peak_mb} for k, v in rows.items()},
            "ratios": {"cold / cached": cold / cached, "warm / cached": warm / cached}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
