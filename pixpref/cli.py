"""The ``pixpref`` command line.

Each command lives in the module that owns its concern and exposes ``register(subparsers)``; this file
only dispatches. Heavy imports (torch, diffusers, gradio) happen inside the command functions, so
``pixpref --help`` is fast.

User errors (:class:`pixpref.errors.PixprefError`, missing files) print one line to stderr and exit with
code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pixpref.errors import PixprefError

# command group -> module that defines ``register(subparsers)``
COMMAND_MODULES = [
    "pixpref.data.cli",
    "pixpref.toyworld.cli",
    "pixpref.models.cli",
    "pixpref.pretrain.cli",
    "pixpref.personalize.cli",
    "pixpref.scorer.cli",
    "pixpref.demo.cli",
    "pixpref.evaluation.cli",
]


# commands that load models: their weight-loading progress bars are hidden (stderr stays one line on errors)
HEAVY_COMMANDS = ("generate", "embed-user", "score", "demo", "eval")


def _quiet_weight_loading() -> None:
    """Hide diffusers' and transformers' per-file loading bars; the commands show their own progress."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixpref",
        description="Personalized preference fine-tuning of text-to-image diffusion models.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in COMMAND_MODULES:
        importlib.import_module(mod_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if args.command in HEAVY_COMMANDS:
        _quiet_weight_loading()
    try:
        rc = args.func(args)
    except (PixprefError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError) as e:
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"pixpref: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pixpref: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
