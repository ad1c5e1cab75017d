"""Text-to-image retrieval of a CLIP model on held-out toy scenes.

    python scripts/eval_clip.py [--model toy] [--n 500] [--seed 12345] [--json out.json]

Renders ``n`` fresh scenes from ``--seed`` (every 4th a shape-colour combination held out from training)
and ranks all ``n`` images for each text query (cosine of normalised embeddings):

- content_top1: query = the image's content-only prompt, once per template in PROMPT_TEMPLATES (averaged);
  correct if the top-ranked image has the query's colour and shape. Target >= 0.90.
- content_top1_seen / content_top1_heldout: the same, split by whether the combination was trained on.
- style_top1: query = the image's full caption (content + binned style words); correct if the top image's
  caption is identical (every word matches).
- style_top5_exact: the queried image itself is among the top 5.
"""

from __future__ import annotations

import argparse
import json
import sys

TARGET = 0.90


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy", help="'toy' or a CLIP folder (open_clip_config.json + weights)")
    parser.add_argument("--n", type=int, default=500, help="held-out images (the retrieval gallery)")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from pixpref.models.clip import load_clip
    from pixpref.pretrain.clip import held_out_scenes, retrieval_eval

    model, _, tokenizer = load_clip(args.model)
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    res = retrieval_eval(model, tokenizer, held_out_scenes(args.n, args.seed), size)
    res.update(model=args.model, seed=args.seed, target=TARGET, passed=res["content_top1"] >= TARGET)
    print(f"CLIP {args.model}: text->image retrieval among {res['n']} held-out images (seed {args.seed})")
    for key in ("content_top1", "content_top1_seen", "content_top1_heldout", "style_top1", "style_top5_exact"):
        print(f"  {key:<22}{res[key]:.3f}")
    print(f"target content_top1 >= {TARGET:.2f} -> {'PASS' if res['passed'] else 'FAIL'}")
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
