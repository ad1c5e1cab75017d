"""``pixpref demo``: launch the Gradio personalization app.

    pixpref demo [--config configs/demo/toy.yaml] [--set rounds=6] [--host 127.0.0.1] [--port 7860] [--share]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="launch the Gradio personalization demo",
                       description="Pick between a few image pairs, then compare personalized and base images.")
    p.add_argument("--config", default=None, help="demo YAML (default: the embedded toy model, configs/demo/toy.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--no-preload", action="store_true", help="load the models on the first request, not at start")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pixpref.config import load_config
    from pixpref.demo.engine import DemoConfig, DemoEngine

    cfg = load_config(args.config, DemoConfig, args.set)
    start = time.perf_counter()
    engine = DemoEngine(cfg)
    if not args.no_preload:
        engine.load()
    workdir = tempfile.mkdtemp(prefix="pixpref-demo-")
    os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(workdir, "gradio"))
    from pixpref.demo.app import create_demo

    demo = create_demo(engine, workdir=os.path.join(workdir, "profiles"))
    print(f"[demo] models loaded and app built in {time.perf_counter() - start:.1f} s")
    launch(demo, cfg, args.host, args.port)
    return 0


def launch(demo, cfg, host: str = "127.0.0.1", port: int = 7860, prevent_thread_lock: bool = False):
    """Queue with the configured concurrency, upload size limit, no extra file routes."""
    demo.queue(default_concurrency_limit=cfg.concurrency_limit, max_size=cfg.max_queue)
    return demo.launch(server_name=host, server_port=port, max_file_size=f"{cfg.max_upload_mb:g}mb",
                       allowed_paths=[], show_error=False, prevent_thread_lock=prevent_thread_lock, quiet=True)
