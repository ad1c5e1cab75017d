"""``pixpref toyworld``: render sample grids and write synthetic-user preference data.

    pixpref toyworld render --n 32 --seed 0 [--shape star] [--colour red] [--size 32] --out grid.png
    pixpref toyworld make-pairs --users 50 --pairs-per-user 200 --seed 0 --out data/toy_pairs
"""

from __future__ import annotations

import argparse

from pixpref.toyworld.scene import COLOURS, SHAPES
from pixpref.toyworld.users import DEFAULT_POPULATION, POPULATIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("toyworld", help="the procedural toy world: sample grids, preference data")
    sub = group.add_subparsers(dest="toyworld_command", metavar="SUBCOMMAND")
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])

    p = sub.add_parser("render", help="render random scenes into one grid PNG")
    p.add_argument("--n", type=int, default=32, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", choices=SHAPES, default=None, help="fix the shape (default: random)")
    p.add_argument("--colour", choices=sorted(COLOURS), default=None, help="fix the colour (default: random)")
    p.add_argument("--combos", choices=("seen", "held_out", "all"), default="all",
                   help="shape-colour combinations to draw from when not fixed")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--ncols", type=int, default=8)
    p.add_argument("--upscale", type=int, default=4, help="nearest-neighbour upscale of the grid")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=_render)

    p = sub.add_parser("make-pairs", help="write Pick-a-Pic style preference pairs of synthetic users")
    p.add_argument("--users", type=int, required=True, help="number of synthetic users")
    p.add_argument("--pairs-per-user", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--unseen-fraction", type=float, default=0.2, help="share of users held out as unseen")
    p.add_argument("--population", choices=tuple(POPULATIONS), default=DEFAULT_POPULATION,
                   help="kind of user population (see pixpref.toyworld.users.POPULATIONS)")
    p.add_argument("--archetype-share", type=float, default=None,
                   help="share of users from named archetypes (default: the population's)")
    p.add_argument("--tie-margin", type=float, default=0.05, help="utility gap below which a pair is a tie")
    p.add_argument("--combos", choices=("seen", "held_out", "all"), default="seen",
                   help="shape-colour combinations the prompts use")
    p.add_argument("--candidates", type=int, default=1,
                   help="each pair is the most style-different of this many candidate pairs (1: two random images)")
    p.add_argument("--shard-rows", type=int, default=20000, help="rows per parquet file")
    p.add_argument("--source", choices=("render", "model"), default="render",
                   help="images from the renderer, or samples of a text-to-image model (PPD trains on those)")
    p.add_argument("--model", default="toy", help="with --source model: 'toy' or a pipeline folder")
    p.add_argument("--per-combo", type=int, default=32, help="with --source model: samples per content combination")
    p.add_argument("--steps", type=int, default=15, help="with --source model: sampler steps")
    p.add_argument("--pool", default=None, help="with --source model: reuse/save the sample pool (.npz) here")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_make_pairs)


def _positive(name: str, value: int) -> None:
    from pixpref.errors import PixprefError

    if value < 1:
        raise PixprefError(f"--{name} must be >= 1, got {value}")


def _render(args: argparse.Namespace) -> int:
    import numpy as np

    from pixpref.io_utils import atomic_path, check_output_path
    from pixpref.toyworld.render import make_grid, render
    from pixpref.toyworld.scene import sample_scene

    _positive("n", args.n)
    _positive("upscale", args.upscale)
    if args.size < 16:
        from pixpref.errors import PixprefError

        raise PixprefError(f"--size must be >= 16, got {args.size}")
    out = check_output_path(args.out, args.overwrite)
    rng = np.random.default_rng(args.seed)
    scenes = [sample_scene(rng, shape=args.shape, colour=args.colour, combos=args.combos) for _ in range(args.n)]
    images = np.stack([render(s, args.size) for s in scenes])
    grid = make_grid(images, ncols=args.ncols, upscale=args.upscale)
    with atomic_path(out) as tmp:
        grid.save(tmp, format="PNG")
    print(f"wrote {out} ({args.n} images, {args.size} px)")
    return 0


def _make_pairs(args: argparse.Namespace) -> int:
    from pixpref.toyworld.pairs import write_pairs
    from pixpref.toyworld.users import sample_population

    _positive("users", args.users)
    _positive("pairs-per-user", args.pairs_per_user)
    users = sample_population(args.users, args.seed, population=args.population,
                              archetype_share=args.archetype_share, unseen_fraction=args.unseen_fraction)
    source, model_name = None, None
    if args.source == "model":
        source, model_name = _model_source(args), f"{args.model}-samples"
    manifest = write_pairs(args.out, users, args.pairs_per_user, args.seed, image_size=args.size,
                           tie_margin=args.tie_margin, combos=args.combos, shard_rows=args.shard_rows,
                           overwrite=args.overwrite, image_source=source, model_name=model_name,
                           candidates=args.candidates, population=args.population)
    print(f"wrote {args.out}: {sum(manifest['files'].values())} pairs from {len(users)} users "
          f"in {len(manifest['files'])} file(s); ties {manifest['tie_rate']:.1%}")
    return 0


def _model_source(args: argparse.Namespace):
    """A pool of the model's samples per content combination (generated once, optionally cached)."""
    from pathlib import Path

    from pixpref.toyworld.model_source import SamplePool

    if args.pool and Path(args.pool).is_file():
        return SamplePool.load(args.pool)
    from pixpref.models.diffusion import load_pipeline

    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    pool = SamplePool.generate(pipe, per_combo=args.per_combo, steps=args.steps, seed=args.seed, combos=args.combos)
    if args.pool:
        pool.save(args.pool)
    return pool
