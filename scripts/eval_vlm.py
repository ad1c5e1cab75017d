"""Attribute accuracy of a VLM's greedy captions on held-out toy scenes.

    python scripts/eval_vlm.py [--model toy] [--n 400] [--seed 12345] [--json out.json]

Renders ``n`` fresh scenes from ``--seed`` (every 4th one a shape-colour combination held out from
training), asks ``<image> Describe the image.``, parses the greedy caption back into attribute words and
compares each with the scene's true word (:func:`pixpref.pretrain.vlm.true_attributes`). A malformed
caption counts wrong on every attribute. Prints one table (all / seen combos / held-out combos) and the
figures as JSON. Targets: content words (colour, shape) >= 0.90, style words >= 0.80; ``position`` is
both horizontal and vertical right.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

CONTENT_TARGET = 0.90
STYLE_TARGET = 0.80


def report(model_name: str, n: int, seed: int) -> dict:
    from pixpref.models.vlm import load_vlm
    from pixpref.pretrain.vlm import ATTRIBUTES, CONTENT_ATTRIBUTES, caption_accuracy, held_out_scenes
    from pixpref.toyworld.scene import HELD_OUT_COMBOS, caption

    model, processor = load_vlm(model_name)
    scenes = held_out_scenes(n, seed)
    t0 = time.perf_counter()
    res = caption_accuracy(model, processor, scenes)
    seconds = time.perf_counter() - t0
    held = [(s.colour, s.shape) in HELD_OUT_COMBOS for s in scenes]
    for h in res["hits"]:
        h["position"] = h["horizontal"] * h["vertical"]

    def acc(mask):
        rows = [h for h, m in zip(res["hits"], mask) if m]
        return {a: sum(r[a] for r in rows) / max(1, len(rows)) for a in (*ATTRIBUTES, "position")}, len(rows)

    groups = {}
    for name, mask in (("all", [True] * n), ("seen", [not x for x in held]), ("held_out", held)):
        a, count = acc(mask)
        groups[name] = {"n": count, "accuracy": a}
    overall = groups["all"]["accuracy"]
    passed = all(overall[a] >= CONTENT_TARGET for a in CONTENT_ATTRIBUTES) and all(
        overall[a] >= STYLE_TARGET for a in (*ATTRIBUTES, "position") if a not in CONTENT_ATTRIBUTES)
    return {
        "model": model_name, "n": n, "seed": seed, "parsed": res["parsed"], "seconds": round(seconds, 1),
        "groups": groups, "targets": {"content": CONTENT_TARGET, "style": STYLE_TARGET}, "pass": passed,
        "examples": [{"true": caption(s), "generated": g} for s, g in zip(scenes[:6], res["captions"][:6])],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy", help="'toy' or a local VLM folder")
    parser.add_argument("--n", type=int, default=400, help="held-out scenes")
    parser.add_argument("--seed", type=int, default=12345, help="scene seed (training uses others)")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rep = report(args.model, args.n, args.seed)
    attrs = list(rep["groups"]["all"]["accuracy"])
    print(f"VLM {rep['model']}: {rep['n']} held-out scenes (seed {rep['seed']}), "
          f"well-formed captions {rep['parsed']:.3f}, {rep['seconds']} s")
    print(f"{'attribute':<12}" + "".join(f"{g + ' (' + str(v['n']) + ')':>18}" for g, v in rep["groups"].items()))
    for a in attrs:
        print(f"{a:<12}" + "".join(f"{v['accuracy'][a]:>18.3f}" for v in rep["groups"].values()))
    for ex in rep["examples"][:3]:
        print(f"  true: {ex['true']}\n  gen : {ex['generated']}")
    verdict = "PASS" if rep["pass"] else "FAIL"
    print(f"targets: content >= {CONTENT_TARGET:.2f}, style >= {STYLE_TARGET:.2f} -> {verdict}")
    text = json.dumps(rep, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0 if rep["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
