"""``pixpref generate``: sample images from the shipped toy model or a local SD 1.5 / SDXL folder.

    pixpref generate --prompt "a red star" --num-images 8 --seed 0 --out outputs/red_star \\
        [--model toy|sd15|sdxl|PATH] [--steps 25] [--guidance-scale G] [--scheduler ddim|ddpm|euler|dpm] \\
        [--user USER.safetensors | --user-pairs PAIRS.jsonl] [--user-scale X] [--adapter dpo|inpo|DIR] \\
        [--user-start F] [--user-end F]

With a user, the user adapter (default: the shipped toy DPO adapter) is installed and the images are
personalized; with no user (or --user-scale 0) they equal the base model's for the same seed.
``--user-start`` / ``--user-end`` limit the user branch to that window of the denoising steps (fractions;
default: the window saved with the adapter).

Writes ``000.png ... NNN.png``, ``grid.png`` and ``generate.json`` (the settings) into ``--out``. The same
seed gives the same images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from pixpref.errors import PixprefError
from pixpref.personalize.names import USER_GUIDANCE_MODES

SCHEDULER_NAMES = ("ddim", "ddpm", "euler", "dpm")  # keys of pixpref.models.diffusion.SCHEDULERS


def check_generate_args(args: argparse.Namespace) -> None:
    """Validate user input before loading anything heavy."""
    if not args.prompt or not args.prompt.strip():
        raise PixprefError("--prompt is empty; give a text prompt, e.g. --prompt 'a red star'")
    if args.num_images < 1:
        raise PixprefError(f"--num-images must be >= 1, got {args.num_images}")
    if args.steps is not None and args.steps <= 0:
        raise PixprefError(f"--steps must be a positive integer, got {args.steps}")
    if args.guidance_scale is not None and not math.isfinite(args.guidance_scale):
        raise PixprefError(f"--guidance-scale must be a finite number, got {args.guidance_scale}")
    if args.user_scale is not None and not math.isfinite(args.user_scale):
        raise PixprefError(f"--user-scale must be a finite number, got {args.user_scale}")
    start = 0.0 if args.user_start is None else args.user_start
    end = 1.0 if args.user_end is None else args.user_end
    if not 0.0 <= start < end <= 1.0:
        raise PixprefError(f"need 0 <= --user-start < --user-end <= 1, got {start} and {end}")
    if args.user is not None and args.user_pairs is not None:
        raise PixprefError("give either --user USER.safetensors or --user-pairs PAIRS.jsonl, not both")
    if args.user is not None or args.user_pairs is not None:
        from pixpref.personalize.pipeline import SHIPPED_ADAPTERS

        if args.adapter not in SHIPPED_ADAPTERS and not Path(args.adapter).is_dir():
            raise PixprefError(f"unknown adapter {args.adapter!r}; valid options: {', '.join(SHIPPED_ADAPTERS)} "
                               "or an adapter folder")
    if args.user is not None:  # a bad profile is refused before any model loads
        from pixpref.personalize.embeddings import load_user_embedding

        load_user_embedding(args.user)
    if args.guidance_scale is not None and args.guidance_scale < 1.0:
        raise PixprefError(
            f"--guidance-scale must be >= 1 (1 disables classifier-free guidance), got {args.guidance_scale}")
    if args.scheduler is not None and args.scheduler not in SCHEDULER_NAMES:
        raise PixprefError(f"unknown scheduler {args.scheduler!r}; valid options: {', '.join(SCHEDULER_NAMES)}")


def generate_images(pipe, prompt: str, num_images: int, seed: int, steps: int, guidance_scale: float):
    """-> ``(N, H, W, 3)`` uint8 images; deterministic for a seed."""
    import numpy as np
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    images = pipe(prompt, num_images_per_prompt=num_images, num_inference_steps=steps,
                  guidance_scale=guidance_scale, generator=generator, output_type="np").images  # (N, H, W, 3)
    return (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)


def _personalized_images(pipe, args: argparse.Namespace, steps: int, guidance: float):
    """Install the user adapter on ``pipe`` and sample for the user given by --user or --user-pairs.

    Returns the uint8 images and the user scale used (--user-scale, else the adapter's saved scale)."""
    import numpy as np

    from pixpref.personalize.adapter import UserAdapter
    from pixpref.personalize.embeddings import load_user_embedding, read_user_encoder_spec
    from pixpref.personalize.pipeline import PersonalizedSampler, adapter_dir, load_lora

    folder = adapter_dir(args.adapter)  # args were checked by check_generate_args (--user-scale included)
    load_lora(pipe.unet, folder)
    sampler = PersonalizedSampler(pipe, UserAdapter.from_pretrained(folder, pipe.unet).float(), base_name=str(args.model))
    sampler.encoder_spec = read_user_encoder_spec(folder)
    if args.user is not None:
        user, meta = load_user_embedding(args.user, expected_dim=sampler.adapter.config.embed_dim)
        wanted = sampler.encoder_spec["pooling"]
        if meta.get("pooling", wanted) != wanted:
            raise PixprefError(f"{args.user} was pooled with {meta['pooling']!r} but the adapter reads {wanted!r} "
                               f"embeddings; re-run embed-user with --pooling {wanted}")
    else:
        from pixpref.personalize.cli import read_user_pairs

        user = sampler.embed_user(read_user_pairs(args.user_pairs, image_size=pipe.unet.config.sample_size))
    scale = sampler.adapter.config.scale if args.user_scale is None else args.user_scale
    images = sampler(args.prompt, user=user, user_scale=scale, num_images=args.num_images, seed=args.seed,
                     num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                     user_guidance=args.user_guidance, user_start=args.user_start, user_end=args.user_end)
    return (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8), scale


def cmd_generate(args: argparse.Namespace) -> int:
    check_generate_args(args)
    from pixpref.io_utils import check_output_path

    out = check_output_path(args.out, args.overwrite)
    if out.exists() and not out.is_dir():
        raise PixprefError(f"--out {out} exists and is not a folder")
    if out.is_dir():  # --overwrite replaces the folder: only ever one that holds a previous generate's files
        import re

        foreign = [p.name for p in out.iterdir()
                   if not (re.fullmatch(r"\d{3,}\.png", p.name) or p.name in ("grid.png", "generate.json"))]
        if foreign:
            raise PixprefError(f"--out {out} holds files generate did not write ({', '.join(sorted(foreign)[:3])}); "
                               "choose a new or empty folder")

    from PIL import Image

    from pixpref.models.diffusion import default_settings, load_pipeline, set_scheduler
    from pixpref.toyworld.render import make_grid

    user_given = args.user is not None or args.user_pairs is not None
    if args.user is not None and args.user_pairs is not None:
        raise PixprefError("give either --user USER.safetensors or --user-pairs PAIRS.jsonl, not both")
    pipe = load_pipeline(args.model)
    default_steps, default_guidance = default_settings(pipe, args.model)
    steps = args.steps if args.steps is not None else default_steps
    guidance = args.guidance_scale if args.guidance_scale is not None else default_guidance
    if args.scheduler is not None:
        set_scheduler(pipe, args.scheduler)
    user_scale = None
    if user_given:
        images, user_scale = _personalized_images(pipe, args, steps, guidance)
    else:  # no user: exactly the base model for this seed
        images = generate_images(pipe, args.prompt, args.num_images, args.seed, steps, guidance)

    # everything is written into a hidden sibling folder that replaces --out only when complete, so a run
    # killed at any moment leaves no half-written file in --out (at most a stale .tmp_ sibling)
    import shutil
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".tmp_{out.name}_*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_{out.name}_", dir=out.parent))
    try:
        paths = []
        for i, img in enumerate(images):
            path = tmp / f"{i:03d}.png"
            Image.fromarray(img).save(path, format="PNG")
            paths.append(path.name)
        upscale = max(1, 128 // images.shape[1])
        make_grid(images, ncols=min(8, len(images)), upscale=upscale).save(tmp / "grid.png", format="PNG")
        settings = {"prompt": args.prompt, "model": str(args.model), "num_images": args.num_images,
                    "seed": args.seed, "user": args.user or args.user_pairs,
                    "user_scale": user_scale if user_given else None,
                    "user_guidance": args.user_guidance if user_given else None,
                    "user_window": [args.user_start, args.user_end] if user_given else None,
                    "adapter": args.adapter if user_given else None,
                    "steps": steps, "guidance_scale": guidance, "scheduler": type(pipe.scheduler).__name__,
                    "images": paths}
        (tmp / "generate.json").write_text(json.dumps(settings, indent=2) + "\n")
        if out.exists():  # --overwrite was given (checked above)
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {len(paths)} images and grid.png to {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="sample images from a text-to-image model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", required=True, help="text prompt, e.g. 'a red star'")
    p.add_argument("--num-images", type=int, default=8, help="images to generate (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same images)")
    p.add_argument("--out", required=True, help="output folder for PNGs, grid.png and generate.json")
    p.add_argument("--model", default="toy", help="toy (shipped), sd15, sdxl (configs/<name>/model.yaml) or a "
                   "local diffusers pipeline folder")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, 25)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale >= 1 (default: the model's; toy 2.0)")
    p.add_argument("--scheduler", default=None, choices=SCHEDULER_NAMES,
                   help="sampling scheduler (default: the one saved with the model; toy ddim)")
    p.add_argument("--user", default=None, help="a user embedding (USER.safetensors from `pixpref embed-user`)")
    p.add_argument("--user-pairs", default=None, help="a user's pairwise choices (JSONL folder format)")
    p.add_argument("--user-scale", type=float, default=None,
                   help="personalization strength (0 = base model; default: the adapter's saved scale)")
    p.add_argument("--user-guidance", default="text", choices=USER_GUIDANCE_MODES,
                   help="text (default): guidance amplifies the prompt only; joint: the prompt and the user together")
    p.add_argument("--user-start", type=float, default=None,
                   help="fraction of the denoising steps before the user branch starts (default: the adapter's)")
    p.add_argument("--user-end", type=float, default=None,
                   help="fraction of the denoising steps at which the user branch stops (default: the adapter's)")
    p.add_argument("--adapter", default="dpo", help="user adapter: dpo or inpo (shipped toy adapters) or a folder")
    p.add_argument("--overwrite", action="store_true", help="write into an existing --out folder")
    p.set_defaults(func=cmd_generate)
