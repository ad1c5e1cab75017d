"""Accuracy of a preference scorer per dimension: toy held-out pairs, and public test sets where you have them.

    python scripts/eval_scorer.py                               # shipped toy scorer, toy held-out pairs
    python scripts/eval_scorer.py --model runs/scorer_toy/scorer --json out.json
    python scripts/eval_scorer.py --model FOLDER --pickapic pickapic_v2/test_unique --hpdv2 HPDv2/test.json

Toy report (pairs drawn with another seed than training, content combinations ``all``):
* per dimension: accuracy against the oracle labels, next to the Bayes ceiling (label noise) and the
  accuracy against the noiseless oracle; separately for renderer pairs and for the base model's samples;
* the same backbone, untouched by the scorer's training, as plain CLIP similarity (cos(image, prompt), one score for every dimension);
* where the aesthetics and detail oracles disagree: Kendall tau between the two dimensions' score
  differences and how often they pick different images (the condition changes the ranking);
* personal: unseen synthetic users, each conditioned on 4 of their own pairs, on their other pairs.
Targets: >= 0.90 on aesthetics, alignment, detail; >= 0.80 on personal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGETS = {"aesthetics": 0.90, "alignment": 0.90, "detail": 0.90, "personal": 0.80}


def toy_report(scorer, args) -> dict:
    import numpy as np

    from pixpref.scorer.benchmarks import evaluate_pairs, kendall_tau, plain_clip_model, score_pairs
    from pixpref.scorer.conditions import PERSONAL
    from pixpref.scorer.toylabels import ToyLabelConfig, make_pairs

    model = scorer.model
    dims = [d for d in model.dimensions if d != PERSONAL]
    cfg = ToyLabelConfig(seed=args.seed, combos="all", render_pairs=args.pairs, model_pairs=args.model_pairs,
                         base_model=args.base_model, label_keep=1.0, users=0)
    pairs = make_pairs(cfg, progress=True)
    scores = score_pairs(model, pairs, dims)
    # plain CLIP: the backbone as it was before the scorer's training (fine-tuned blocks not used)
    clip = score_pairs(plain_clip_model(model), pairs, dims, clip_baseline=True)
    report: dict = {"temperature": cfg.temperature, "tie_margin": cfg.tie_margin,
                    "crisp_sharpness": cfg.crisp_sharpness, "sources": {}}
    for source in ("render", "model"):
        mask = np.array([s == source for s in pairs.sources])
        if not mask.any():
            continue
        report["sources"][source] = {
            "scorer": evaluate_pairs(model, pairs, dims, mask, scores),
            "clip_baseline": evaluate_pairs(model, pairs, dims, mask, clip),
        }
    # the condition matters: pairs where the aesthetics and detail oracles prefer different images
    pa, pd = pairs.probs["aesthetics"], pairs.probs["detail"]
    la, ld = pairs.labels["aesthetics"], pairs.labels["detail"]
    disagree = (la != 0.5) & (ld != 0.5) & ((pa > 0.5) != (pd > 0.5))
    if disagree.any():
        da = scores["aesthetics"][0] - scores["aesthetics"][1]
        dd = scores["detail"][0] - scores["detail"][1]
        report["disagreement"] = {
            "pairs": int(disagree.sum()),
            "kendall_tau_aesthetics_vs_detail": kendall_tau(da[disagree], dd[disagree]),
            "different_choice_rate": float(np.mean((da[disagree] > 0) != (dd[disagree] > 0))),
            "aesthetics_follows_its_oracle": float(np.mean((da[disagree] > 0) == (pa[disagree] > 0.5))),
            "detail_follows_its_oracle": float(np.mean((dd[disagree] > 0) == (pd[disagree] > 0.5))),
        }
    if PERSONAL in model.dimensions and args.users:
        from pixpref.scorer.api import user_encoder_spec

        # embed users the way this scorer was trained to read them (its user_encoder.json)
        spec = user_encoder_spec(args.model, {"pooling": ToyLabelConfig.user_pooling})
        ucfg = ToyLabelConfig(seed=args.seed + 1, render_pairs=0, users=args.users, user_split="unseen",
                              pairs_per_user=args.user_pairs, user_encoder=args.user_encoder,
                              user_pooling=spec["pooling"], user_head=spec.get("head", "toy"))
        upairs = make_pairs(ucfg, progress=True)
        if upairs.embeddings.shape[-1] != model.config.user_dim:
            report["personal_error"] = (f"user encoder width {upairs.embeddings.shape[-1]} != scorer user_dim "
                                        f"{model.config.user_dim}")
        else:
            uscores = score_pairs(model, upairs, [PERSONAL, "overall"] if "overall" in dims else [PERSONAL])
            report["personal"] = evaluate_pairs(model, upairs, [PERSONAL], scores=uscores)[PERSONAL]
            if "overall" in uscores:  # the same pairs ranked without the user: how much the user adds
                report["personal"]["overall_dimension_accuracy"] = evaluate_pairs(
                    model, upairs, [PERSONAL], scores={PERSONAL: uscores["overall"]})[PERSONAL]["accuracy"]
            report["personal"]["unseen_users"] = int(len(np.unique(upairs.user)))
    return report


def print_report(report: dict) -> None:
    for source, block in report.get("sources", {}).items():
        print(f"\n{source} pairs (temperature {report['temperature']}, tie margin {report['tie_margin']}, "
              f"crisp sharpness {report.get('crisp_sharpness')})")
        print(f"{'dimension':<12}{'n':>6}{'accuracy':>10}{'ceiling':>9}{'vs oracle':>11}{'CLIP':>8}{'target':>8}")
        for d, r in block["scorer"].items():
            target = TARGETS.get(d)
            mark = "" if target is None else ("ok" if r["accuracy"] >= target else "MISSED")
            print(f"{d:<12}{r['n']:>6}{r['accuracy']:>10.3f}{r['bayes_ceiling']:>9.3f}{r['oracle_accuracy']:>11.3f}"
                  f"{block['clip_baseline'][d]['accuracy']:>8.3f}{(target or float('nan')):>8.2f} {mark}")
    if "disagreement" in report:
        r = report["disagreement"]
        print(f"\naesthetics vs detail where their oracles disagree ({r['pairs']} pairs): Kendall tau "
              f"{r['kendall_tau_aesthetics_vs_detail']:.3f}, different choice {r['different_choice_rate']:.3f}, "
              f"aesthetics follows its oracle {r['aesthetics_follows_its_oracle']:.3f}, detail follows its "
              f"oracle {r['detail_follows_its_oracle']:.3f}")
    if "personal" in report:
        r = report["personal"]
        mark = "ok" if r["accuracy"] >= TARGETS["personal"] else "MISSED"
        print(f"\npersonal, {r['unseen_users']} unseen users, {r['n']} held-out pairs: accuracy {r['accuracy']:.3f} "
              f"(ceiling {r['bayes_ceiling']:.3f}; overall dimension on the same pairs "
              f"{r.get('overall_dimension_accuracy', float('nan')):.3f}) target 0.80 {mark}")
    if "personal_error" in report:
        print(f"\npersonal not evaluated: {report['personal_error']}")
    for name in ("pickapic", "hpdv2"):
        if name in report:
            print(f"\n{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in report[name].items()))


def main(argv: list[str] | None = None) -> int:
    from pixpref.errors import PixprefError

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="toy", help="'toy' (shipped) or a scorer folder")
    p.add_argument("--pairs", type=int, default=1500, help="toy renderer pairs (0: skip the toy report)")
    p.add_argument("--model-pairs", type=int, default=500, help="toy pairs of the base model's samples")
    p.add_argument("--base-model", default="toy", help="base model for the generated pairs")
    p.add_argument("--users", type=int, default=150, help="population size; its unseen users are evaluated")
    p.add_argument("--user-pairs", type=int, default=24, help="pairs per unseen user (4 are the context)")
    p.add_argument("--user-encoder", default="toy", help="'toy' VLM, a VLM folder, or 'oracle'")
    p.add_argument("--seed", type=int, default=1000, help="seed of the held-out toy pairs")
    p.add_argument("--pickapic", metavar="PATH", help="Pick-a-Pic v2 parquet file/folder (e.g. test_unique)")
    p.add_argument("--hpdv2", metavar="TEST_JSON", help="HPD v2 test.json")
    p.add_argument("--hpdv2-images", metavar="FOLDER", help="HPD v2 test image folder (default: next to the json)")
    p.add_argument("--dimension", default="overall", help="dimension scored on the public sets")
    p.add_argument("--limit", type=int, help="evaluate at most this many public pairs/prompts")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: as is)")
    args = p.parse_args(argv)
    try:
        import torch

        from pixpref.scorer.api import PreferenceScorer
        from pixpref.scorer.benchmarks import hpdv2_accuracy, pickapic_accuracy

        if args.threads:
            torch.set_num_threads(args.threads)
        scorer = PreferenceScorer.from_pretrained(args.model)
        report: dict = {"model": args.model}
        if args.pairs or args.model_pairs:
            report.update(toy_report(scorer, args))
        if args.pickapic:
            report["pickapic"] = pickapic_accuracy(scorer, args.pickapic, args.dimension, args.limit)
        if args.hpdv2:
            report["hpdv2"] = hpdv2_accuracy(scorer, args.hpdv2, args.hpdv2_images, args.dimension, args.limit)
    except PixprefError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(report)
    text = json.dumps(report, indent=1, default=float)
    print("\n" + text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
