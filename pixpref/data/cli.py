"""``pixpref data ...`` commands."""

from __future__ import annotations

import argparse
import json


def _cmd_stats(args: argparse.Namespace) -> int:
    from pixpref.data.stats import dataset_stats

    result = dataset_stats(args.path, fmt=args.format, tie_policy=args.tie_policy,
                           check_images=args.check_images, batch_rows=args.batch_rows, k=args.k)
    print(json.dumps(result, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group."""
    from pixpref.data.pairs import FORMATS, TIE_POLICIES

    data = subparsers.add_parser("data", help="inspect preference data (Pick-a-Pic parquet, JSONL)")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data.set_defaults(func=lambda _args: (data.print_help(), 2)[1])

    stats = sub.add_parser("stats", help="print one JSON object: pairs, users, ties, pairs per user, skips")
    stats.add_argument("path", help="a Pick-a-Pic parquet file or folder, or a JSONL file")
    stats.add_argument("--format", choices=FORMATS, default="auto", help="data format (default: auto)")
    stats.add_argument("--tie-policy", choices=TIE_POLICIES, default="soft",
                       help="soft: count ties under 'ties'; drop: count them as skipped (default: soft)")
    stats.add_argument("--check-images", action="store_true",
                       help="decode every image and count undecodable ones (slow on large sets)")
    stats.add_argument("--batch-rows", type=int, default=4096, help="rows per streamed parquet batch")
    stats.add_argument("--k", type=int, default=None,
                       help="also count users with at least K pairs (enough for one few-shot chunk)")
    stats.set_defaults(func=_cmd_stats)
