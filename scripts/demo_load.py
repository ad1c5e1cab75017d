"""Load test of the Gradio demo: N concurrent gradio_client sessions, each running the whole flow
(show a pair, 4 choices, make a profile, generate) again and again for D seconds.

    HF_HUB_OFFLINE=1 python scripts/demo_load.py --clients 20 --seconds 60 [--json runs/demo_load.json]
    HF_HUB_OFFLINE=1 python scripts/demo_load.py --clients 10 --flows 1      # one flow per client

Prints the configuration, flows completed, errors, and p50/p95/max latency per endpoint (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60.0, help="keep starting flows for this long")
    ap.add_argument("--flows", type=int, default=0, help="flows per client (0 = as many as fit in --seconds)")
    ap.add_argument("--concurrency", type=int, default=2, help="the app's concurrency_limit")
    ap.add_argument("--steps", type=int, default=0, help="sampling steps (0 = the model's default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import numpy as np
    from gradio_client import Client

    from pixpref.demo.app import create_demo
    from pixpref.demo.cli import launch
    from pixpref.demo.engine import DemoConfig, DemoEngine

    cfg = DemoConfig(concurrency_limit=args.concurrency, steps=args.steps, max_queue=max(64, 4 * args.clients))
    t0 = time.perf_counter()
    engine = DemoEngine(cfg).load()
    demo = create_demo(engine, workdir=tempfile.mkdtemp(prefix="pixpref-load-"))
    port = _free_port()
    launch(demo, cfg, "127.0.0.1", port, prevent_thread_lock=True)
    url = f"http://127.0.0.1:{port}/"
    print(f"app ready in {time.perf_counter() - t0:.1f} s at {url}")

    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    flows = [0] * args.clients
    lock = threading.Lock()
    deadline = time.perf_counter() + args.seconds

    def timed(client, name, *a):
        start = time.perf_counter()
        out = client.predict(*a, api_name=f"/{name}")
        with lock:
            latencies[name.split("_")[0]].append(time.perf_counter() - start)
        return out

    def worker(i: int) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as e:  # noqa: BLE001 - counted and reported
            with lock:
                errors.append(f"client {i}: connect: {e}")
            return
        while (args.flows and flows[i] < args.flows) or (not args.flows and time.perf_counter() < deadline):
            try:
                timed(client, "new_pair", cfg.prompts[i % len(cfg.prompts)])
                for r in range(cfg.rounds):
                    timed(client, "choose_a" if (i + r) % 2 else "choose_b")
                timed(client, "make_profile", f"user{i}")
                timed(client, "generate", cfg.prompts[(i + 1) % len(cfg.prompts)], f"user{i}", 1.0, i)
                flows[i] += 1
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"client {i}: {type(e).__name__}: {str(e)[:200]}")
                break

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    demo.close()

    import torch

    report = {
        "clients": args.clients, "seconds": args.seconds, "flows_per_client": args.flows,
        "concurrency_limit": cfg.concurrency_limit, "num_images": cfg.num_images,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
                   f"{torch.get_num_threads()}, {'CUDA' if torch.cuda.is_available() else 'CPU only'}",
        "wall_s": round(wall, 1), "flows_completed": int(sum(flows)), "errors": len(errors),
        "error_samples": errors[:5], "latency_s": {},
    }
    for name, values in sorted(latencies.items()):
        v = np.array(values)
        report["latency_s"][name] = {"n": int(v.size), "p50": round(float(np.percentile(v, 50)), 3),
                                     "p95": round(float(np.percentile(v, 95)), 3), "max": round(float(v.max()), 3)}
    print(json.dumps(report, indent=2))
    if args.json:
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if errors else 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
