"""Cost of one preference-training step, measured side by side in one run.

    python benchmarks/bench_ppd_step.py [--model toy] [--pairs 16] [--repeats 10] [--threads 1]

Prints, for the same UNet, adapter and batch: SFT step over B images, DPO step over B pairs (policy
forward+backward on 2B, reference forward on 2B: compute limit about 2.7x SFT), InPO step (DPO plus 10
DDIM-inversion forwards on 2B), personalized vs base sampling, and the peak resident memory of each.
With ``--report runs/eval_toy/report.json`` (a ``pixpref eval`` report with ``checkpoint_runs``) it also
prints the steps and wall-clock each training run needed to reach the report's target win rate, as ratios.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="toy")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--report", default=None, help="pixpref eval report.json with checkpoint curves (steps to target)")
    args = ap.parse_args(argv)

    import torch

    from pixpref.models.diffusion import load_pipeline
    from pixpref.personalize.adapter import UserAdapter, UserAdapterConfig
    from pixpref.personalize.evaluate import generate
    from pixpref.personalize.losses import get_loss
    from pixpref.personalize.trainer import PairBatch, PersonalizedUNet, preference_loss

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from pixpref.errors import PixprefError

    try:  # e.g. sd15 on a machine without its weights
        pipe = load_pipeline(args.model, device=device)
    except PixprefError as e:
        print(f"skipped: {e}")
        return 0
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet.requires_grad_(False)
    c, s = unet.config.in_channels, unet.config.sample_size
    b, width = args.pairs, unet.config.cross_attention_dim
    adapter = UserAdapter(UserAdapterConfig(embed_dim=192, num_tokens=5, pos_embed=True), unet).to(device)
    model = PersonalizedUNet(unet, adapter)
    for p in adapter.parameters():  # a trained-looking adapter, so the user branch really runs
        torch.nn.init.normal_(p, std=0.02)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batch = PairBatch(torch.randn(b, c, s, s, generator=g).to(device), torch.randn(b, c, s, s, generator=g).to(device),
                      torch.randn(b, 16, width, generator=g).to(device), torch.randn(b, 5, 192, generator=g).to(device),
                      torch.ones(b, device=device))

    def step(loss_name):
        loss, _ = preference_loss(model, batch, get_loss(loss_name), pipe.scheduler, torch.Generator().manual_seed(1),
                                  beta=2000.0)
        loss.backward()
        opt.step()
        opt.zero_grad()

    def sample(users):
        lat = torch.randn(4, c, s, s, generator=torch.Generator().manual_seed(0))
        generate(pipe, adapter, "a red star", lat, users, steps=20, guidance=2.0)

    def timed(fn):
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        gc.collect()
        return statistics.median(times), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    rows = {}
    rows["sft"] = timed(lambda: step("sft"))
    rows["dpo"] = timed(lambda: step("dpo"))
    rows["inpo"] = timed(lambda: step("inpo"))
    rows["sample_base"] = timed(lambda: sample(None))
    rows["sample_personal"] = timed(lambda: sample(torch.randn(1, 5, 192)))

    info = {"device": device, "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "model": args.model, "pairs": b, "image": [c, s, s], "repeats": args.repeats}
    print(json.dumps(info))
    print(f"{'what':<18} {'median s':>9} {'peak RSS MB':>12}")
    for k, (t, mem) in rows.items():
        print(f"{k:<18} {t:>9.4f} {mem:>12.0f}")
    ratios = {
        "dpo_step / sft_step": rows["dpo"][0] / rows["sft"][0],
        "inpo_step / dpo_step": rows["inpo"][0] / rows["dpo"][0],
        "personal_sampling / base_sampling": rows["sample_personal"][0] / rows["sample_base"][0],
    }
    if args.report:
        ratios.update(target_ratios(args.report))
    for k, v in ratios.items():
        print(f"{k:<36} {v:6.2f}" if v is not None else f"{k:<36}    n/a (a run never reached the target)")
    print("(peak RSS is the process high-water mark so far, so it only grows down the table)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": {k: {"seconds": t, "peak_rss_mb": m} for k, (t, m) in rows.items()},
                       "ratios": ratios}, f, indent=1)
    return 0


def target_ratios(path: str) -> dict[str, float | None]:
    """Steps / wall-clock ratios to the target win rate, from a report's checkpoint curves."""
    with open(path) as f:
        cc = json.load(f).get("checkpoint_curves")
    if not cc:
        print(f"{path} has no checkpoint curves (run pixpref eval with checkpoint_runs); no steps-to-target ratio")
        return {}
    t = cc["target"]
    for name, r in t["runs"].items():
        print(f"{name}: reaches win rate {t['target']:.2f} at step {r['steps']} ({r['wall_seconds']} s); "
              f"best {r['best_win_rate']:.3f} by step {r['last_step']}")
    out = {}
    for pair, ratio in t["ratios"].items():
        out[f"{pair} steps to {t['target']:.2f}"] = ratio["steps"]
        out[f"{pair} wall to {t['target']:.2f}"] = ratio["wall"]
    return out


if __name__ == "__main__":
    sys.exit(main())
