"""``pixpref score``: score image files against prompts on each preference dimension.

pixpref score --images out/ --prompt "a red circle" --json
pixpref score --images a.png b.png --prompts prompts.txt --dimensions overall,personal --user USER.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pixpref.errors import PixprefError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``score`` command."""
    p = subparsers.add_parser(
        "score",
        help="score images on each preference dimension",
        description="Score images against their prompts with a multi-dimensional preference scorer.",
    )
    p.add_argument(
        "--images", nargs="+", required=True, metavar="PATH", help="image files and/or folders of images"
    )
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", help="one prompt for every image")
    group.add_argument("--prompts", metavar="FILE", help="text file with one prompt per line, one per image")
    p.add_argument(
        "--dimensions", help="comma-separated dimensions (default: all; personal only with --user)"
    )
    p.add_argument(
        "--user", metavar="USER.safetensors", help="user embedding, needed for the personal dimension"
    )
    p.add_argument("--model", default="toy", help="'toy' (shipped) or a scorer folder (default: toy)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.set_defaults(func=run_score)


def collect_images(paths: list[str]) -> list[Path]:
    """Expand files and folders (sorted image files in each folder) into a list of image paths."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise PixprefError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise PixprefError(f"image path not found: {path}")
    return out


def read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line."""
    file = Path(path)
    if not file.is_file():
        raise PixprefError(f"prompts file not found: {file}")
    return [line.strip() for line in file.read_text().splitlines() if line.strip()]


def run_score(args: argparse.Namespace) -> int:
    from pixpref.scorer.api import PreferenceScorer

    images = collect_images(args.images)
    prompts = read_prompts(args.prompts) if args.prompts is not None else args.prompt
    if isinstance(prompts, list) and len(prompts) != len(images):
        raise PixprefError(
            f"{args.prompts} has {len(prompts)} prompts for {len(images)} images; give one per image"
        )
    scorer = PreferenceScorer.from_pretrained(args.model, device=args.device)
    scores = scorer.score(
        [str(p) for p in images], prompts, args.dimensions, user=args.user, batch_size=args.batch_size
    )
    dims = list(scores)
    prompt_list = prompts if isinstance(prompts, list) else [prompts] * len(images)
    if args.json:
        for i, path in enumerate(images):
            row = {
                "image": str(path),
                "prompt": prompt_list[i],
                "scores": {d: float(scores[d][i]) for d in dims},
            }
            print(json.dumps(row))
    else:
        width = max(len(str(p)) for p in images)
        print(f"{'image':<{width}}  " + "  ".join(f"{d:>10}" for d in dims))
        for i, path in enumerate(images):
            print(f"{str(path):<{width}}  " + "  ".join(f"{float(scores[d][i]):>10.4f}" for d in dims))
    return 0
