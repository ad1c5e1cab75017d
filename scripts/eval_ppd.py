"""Acceptance figures of personalized fine-tuning in the toy world (unseen users, exact oracle utility).

    python scripts/eval_ppd.py --data runs/toy_ppd_data --adapters dpo=pixpref/pretrained/toy/adapter_dpo \
        inpo=pixpref/pretrained/toy/adapter_inpo --oracle-adapter runs/ppd_oracle/adapter \
        --k 1 2 4 8 --users 30 --json runs/eval_ppd.json

Prints, per adapter: win rate of personalized over base images (same prompts and noises) with a 95% CI,
prompt adherence of both; the few-shot curve over k (first adapter); the upper bound with the user's true
utility weights; and interpolation curves between two pairs of users.

The full report (scorer judge, agreement, figures, training curves, image grids) is ``pixpref eval``
(pixpref/evaluation, configs/eval/toy.yaml); this script stays for the oracle-adapter upper bound and for
adapter folders without a user_encoder.json (``--pooling``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pixpref.evaluation.config import DEFAULT_PROMPTS as EVAL_PROMPTS
from pixpref.evaluation.examples import user_examples


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="toy PPD data folder (users.json, unseen-*.parquet)")
    ap.add_argument("--adapters", nargs="*", default=[], metavar="NAME=DIR")
    ap.add_argument("--pooling", default="image_contrast_all_layers", help="user-encoder pooling the adapters were trained with")
    ap.add_argument("--oracle-adapter", default=None, help="adapter trained on true utility weights (upper bound)")
    ap.add_argument("--base", default="toy")
    ap.add_argument("--k", nargs="+", type=int, default=[4])
    ap.add_argument("--users", type=int, default=30, help="unseen users evaluated")
    ap.add_argument("--seeds", type=int, default=4, help="images per prompt")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--interpolate", type=int, default=2, help="user pairs for interpolation curves")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from pixpref.models.diffusion import load_pipeline
    from pixpref.personalize.adapter import UserAdapter
    from pixpref.personalize.evaluate import (
        EvalSetup,
        base_images,
        interpolation_curve,
        personalized_images,
        win_rate,
    )
    from pixpref.personalize.user_encoder import UserEncoder, UserEncoderConfig
    from pixpref.toyworld.users import load_users

    t0 = time.time()
    data = Path(args.data)
    users = [u for u in load_users(data / "users.json").users if u.split == "unseen"][: args.users]
    pipe = load_pipeline(args.base)
    pipe.set_progress_bar_config(disable=True)
    setup = EvalSetup(prompts=EVAL_PROMPTS, seeds=args.seeds, steps=args.steps)
    base = base_images(pipe, setup)
    encoder = UserEncoder.from_pretrained("toy", UserEncoderConfig(pooling=args.pooling)) if args.adapters else None
    report: dict = {"users": len(users), "prompts": EVAL_PROMPTS, "images_per_prompt": args.seeds,
                    "steps": args.steps, "adapters": {}, "few_shot": {}}

    def load_adapter(path):
        return UserAdapter.from_pretrained(path, pipe.unet).eval()

    def install(adapter):
        for a in list(installed):
            a.remove(pipe.unet)
            installed.remove(a)
        adapter.install(pipe.unet)
        installed.append(adapter)

    installed: list = []
    emb_by_k = {}
    for k in (sorted(set(args.k) | {4}) if encoder is not None else []):
        examples = user_examples(data, users, k)
        emb_by_k[k] = encoder.encode([examples[str(u.id)] for u in users])  # (U, T, D)

    print(f"{'adapter':<12} {'k':>2} {'win rate':>9} {'95% CI':>15} {'adh. base':>9} {'adh. pers':>9}")
    for i, spec in enumerate(args.adapters):
        name, path = spec.split("=", 1)
        adapter = load_adapter(path)
        install(adapter)
        ks = args.k if i == 0 else [4]
        for k in ks:
            res = win_rate(users, personalized_images(pipe, adapter, setup, emb_by_k[k]), base, setup.prompts)
            print(f"{name:<12} {k:>2} {res.win_rate:>9.3f} [{res.ci[0]:.3f}, {res.ci[1]:.3f}] "
                  f"{res.adherence_base:>9.3f} {res.adherence_personal:>9.3f}")
            if k == 4:
                report["adapters"][name] = res.to_dict()
            if i == 0:
                report["few_shot"][str(k)] = res.to_dict()
        if i == 0 and args.interpolate:
            curves = []
            for j in range(args.interpolate):
                a, b = users[2 * j], users[2 * j + 1]
                curve = interpolation_curve(pipe, adapter, setup, a, b, emb_by_k[4][2 * j], emb_by_k[4][2 * j + 1])
                curve.update(user_a=a.id, user_b=b.id)
                curves.append(curve)
                print(f"interpolation u{a.id}->u{b.id}: utility_a {np.round(curve['utility_a'], 3).tolist()} "
                      f"utility_b {np.round(curve['utility_b'], 3).tolist()}")
            report["interpolation"] = curves

    if args.oracle_adapter:
        adapter = load_adapter(args.oracle_adapter)
        install(adapter)
        weights = torch.stack([torch.as_tensor(u.weights_vector(), dtype=torch.float32)[None] for u in users])
        res = win_rate(users, personalized_images(pipe, adapter, setup, weights), base, setup.prompts)
        print(f"{'oracle':<12} {'-':>2} {res.win_rate:>9.3f} [{res.ci[0]:.3f}, {res.ci[1]:.3f}] "
              f"{res.adherence_base:>9.3f} {res.adherence_personal:>9.3f}")
        report["oracle_upper_bound"] = res.to_dict()
    report["seconds"] = time.time() - t0
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"done in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
