"""Acceptance figures of a toy base model: prompt adherence and style diversity, measured by the oracle.

    HF_HUB_OFFLINE=1 python scripts/eval_base_model.py [--model toy|PATH] [--per-seen 8] [--per-held-out 24]
        [--steps 25] [--guidance-scale 2.0] [--scheduler ddim] [--seed 0] [--json OUT.json]

Adherence: for every shape-colour combination, generate images from prompts (templates cycled) and check
the oracle's colour and shape detectors against the prompt. Targets: >= 90% on seen combinations, >= 60%
on held-out ones (never shown in training).

Style diversity: for each oracle feature, the 1-D Wasserstein distance between the generated images'
measurements and those of freshly rendered training-distribution images for the same prompts (uniform
style), next to the distance between two independent rendered sets (the sampling-noise floor). A style
feature counts as collapsed when the generated spread (std) is below 40% of the rendered one.
Prints a table, then one JSON object (also written to --json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

STYLE_FEATURES = ("bg_lightness", "bg_hue", "size", "cx", "cy", "obj_lightness", "obj_saturation", "texture",
                  "outline")
QUALITY_FEATURES = ("sharpness", "noise")
COLLAPSE_RATIO = 0.4
TARGETS = {"seen": 0.90, "held_out": 0.60}


def prompts_for(split: str, per_combo: int) -> tuple[list[str], list[tuple[str, str]]]:
    from pixpref.toyworld.scene import PROMPT_TEMPLATES, content_combos

    prompts, combos = [], []
    for colour, shape in content_combos(split):
        for i in range(per_combo):
            prompts.append(PROMPT_TEMPLATES[i % len(PROMPT_TEMPLATES)].format(colour=colour, shape=shape))
            combos.append((colour, shape))
    return prompts, combos


def generate(pipe, prompts: list[str], steps: int, guidance: float, seed: int, batch: int) -> np.ndarray:
    """-> (N, 32, 32, 3) uint8, one image per prompt, reproducible for a seed."""
    import torch
    from tqdm.auto import tqdm

    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in tqdm(range(0, len(prompts), batch), desc="sampling", leave=False):
        imgs = pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=gen,
                    output_type="np").images
        out.append((np.clip(imgs, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.concatenate(out)


def render_reference(combos: list[tuple[str, str]], seed: int) -> np.ndarray:
    """Training-distribution renders (uniform style) for the same content."""
    from pixpref.toyworld.render import render_batch
    from pixpref.toyworld.scene import sample_scene

    rng = np.random.default_rng(seed)
    return render_batch([sample_scene(rng, shape=s, colour=c, combos="all") for c, s in combos])


def adherence(images: np.ndarray, prompts: list[str], combos: list[tuple[str, str]]) -> dict:
    from pixpref.toyworld import oracle

    ok = oracle.prompt_adherence(images, prompts)
    colours, shapes = oracle.detect(images)
    per_combo: dict[str, float] = {}
    for combo in dict.fromkeys(combos):
        idx = [i for i, c in enumerate(combos) if c == combo]
        per_combo[f"{combo[0]} {combo[1]}"] = float(ok[idx].mean())
    return {
        "accuracy": float(ok.mean()),
        "colour_accuracy": float(np.mean([c == w[0] for c, w in zip(colours, combos)])),
        "shape_accuracy": float(np.mean([s == w[1] for s, w in zip(shapes, combos)])),
        "no_object": float(np.mean([s == "none" for s in shapes])),
        "n": len(prompts),
        "worst_combos": dict(sorted(per_combo.items(), key=lambda kv: kv[1])[:5]),
    }


def diversity(generated: np.ndarray, reference: np.ndarray, reference2: np.ndarray) -> dict:
    from scipy.stats import wasserstein_distance

    from pixpref.toyworld import oracle

    g, r, r2 = oracle.measure(generated), oracle.measure(reference), oracle.measure(reference2)
    out = {}
    for f in STYLE_FEATURES + QUALITY_FEATURES:
        std_g, std_r = float(np.std(g[f])), float(np.std(r[f]))
        out[f] = {
            "wasserstein": float(wasserstein_distance(g[f], r[f])),
            "floor": float(wasserstein_distance(r2[f], r[f])),
            "mean_gen": float(np.mean(g[f])), "mean_ref": float(np.mean(r[f])),
            "std_gen": std_g, "std_ref": std_r,
            "collapsed": bool(f in STYLE_FEATURES and std_g < COLLAPSE_RATIO * std_r),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy")
    p.add_argument("--per-seen", type=int, default=8, help="images per seen combination (35 combinations)")
    p.add_argument("--per-held-out", type=int, default=24, help="images per held-out combination (5)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance-scale", type=float, default=None, help="default: the model's (toy 2.0)")
    p.add_argument("--scheduler", default=None, choices=("ddim", "ddpm", "euler", "dpm"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=40)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = default); 1 is fastest on a busy box")
    p.add_argument("--json", default=None, help="also write the JSON result here")
    p.add_argument("--save-grid", default=None, help="write a grid PNG of some generated images here")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from pixpref.models.diffusion import default_settings, load_pipeline, set_scheduler

    pipe = load_pipeline(args.model)
    _, default_guidance = default_settings(pipe, args.model)
    guidance = args.guidance_scale if args.guidance_scale is not None else default_guidance
    if args.scheduler:
        set_scheduler(pipe, args.scheduler)

    start = time.perf_counter()
    result: dict = {"model": str(args.model), "steps": args.steps, "guidance_scale": guidance,
                    "scheduler": type(pipe.scheduler).__name__, "seed": args.seed, "adherence": {}}
    all_gen, all_ref, all_ref2 = [], [], []
    for split, per in (("seen", args.per_seen), ("held_out", args.per_held_out)):
        prompts, combos = prompts_for(split, per)
        images = generate(pipe, prompts, args.steps, guidance, args.seed, args.batch)
        result["adherence"][split] = adherence(images, prompts, combos)
        result["adherence"][split]["target"] = TARGETS[split]
        result["adherence"][split]["pass"] = result["adherence"][split]["accuracy"] >= TARGETS[split]
        all_gen.append(images)
        all_ref.append(render_reference(combos, args.seed + 1))
        all_ref2.append(render_reference(combos, args.seed + 2))
    gen = np.concatenate(all_gen)
    result["diversity"] = diversity(gen, np.concatenate(all_ref), np.concatenate(all_ref2))
    result["collapsed_features"] = [f for f, d in result["diversity"].items() if d["collapsed"]]
    result["wall_s"] = round(time.perf_counter() - start, 1)
    if args.save_grid:
        from pixpref.toyworld.render import make_grid

        pick = np.concatenate([all_gen[0][i * args.per_seen:(i + 1) * args.per_seen] for i in range(0, 35, 5)]
                              + [all_gen[1][i * args.per_held_out:i * args.per_held_out + args.per_seen]
                                 for i in range(5)])
        make_grid(pick, ncols=args.per_seen, upscale=3).save(args.save_grid)

    print(f"{'split':<10}{'adherence':>10}{'colour':>8}{'shape':>8}{'none':>7}{'n':>6}  target")
    for split, a in result["adherence"].items():
        print(f"{split:<10}{a['accuracy']:>10.3f}{a['colour_accuracy']:>8.3f}{a['shape_accuracy']:>8.3f}"
              f"{a['no_object']:>7.3f}{a['n']:>6}  >= {a['target']:.2f} {'PASS' if a['pass'] else 'FAIL'}")
    print(f"\n{'feature':<16}{'W1(gen,ref)':>12}{'W1 floor':>10}{'mean g/r':>14}{'std g/r':>14}  collapsed")
    for f, d in result["diversity"].items():
        print(f"{f:<16}{d['wasserstein']:>12.3f}{d['floor']:>10.3f}{d['mean_gen']:>7.2f}/{d['mean_ref']:<6.2f}"
              f"{d['std_gen']:>7.2f}/{d['std_ref']:<6.2f}  {'YES' if d['collapsed'] else 'no'}")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
