"""``pixpref embed-user``: a user's few pairwise choices (JSONL folder format) -> USER.safetensors."""

from __future__ import annotations

import argparse
import json


def read_user_pairs(path: str, image_size: int | None = None) -> list[tuple[str, object, object]]:
    """(prompt, chosen, rejected) examples from a JSONL pair file; ties cannot express a preference."""
    from pixpref.data.jsonl import iter_jsonl
    from pixpref.errors import PixprefError

    pairs = [(p.prompt, p.chosen, p.rejected) for p in iter_jsonl(path, tie_policy="drop", size=image_size)]
    if not pairs:
        raise PixprefError(f"{path} holds no strict preferences (ties are skipped); a user needs at least one")
    return pairs


def _cmd_embed_user(args: argparse.Namespace) -> int:
    from pixpref.io_utils import check_output_path
    from pixpref.personalize.embeddings import save_user_embedding
    from pixpref.personalize.user_encoder import UserEncoder, UserEncoderConfig

    check_output_path(args.out, args.overwrite)
    pooling, head = args.pooling, args.head
    if pooling is None:  # the pooling (and head) the adapter that will read this profile was trained with

        from pixpref.personalize.embeddings import read_user_encoder_spec
        from pixpref.personalize.pipeline import adapter_dir

        folder = adapter_dir(args.adapter)
        spec = read_user_encoder_spec(folder)
        pooling, head = spec["pooling"], head or spec.get("head")
    args.pooling = pooling
    config = UserEncoderConfig(vlm=args.vlm, pooling=pooling, head=head or "toy", max_pairs=args.max_pairs,
                               chunk_pairs=args.chunk_pairs)
    pairs = read_user_pairs(args.pairs, image_size=args.image_size)
    encoder = UserEncoder.from_pretrained(args.vlm, config)
    emb = encoder.encode_one(pairs)
    meta = {"vlm": args.vlm, "pooling": args.pooling, "num_pairs": len(pairs)}
    if args.chunk_pairs:
        meta["chunk_pairs"] = args.chunk_pairs
    if pooling == "preference_head":
        meta["head"] = config.head
    save_user_embedding(args.out, emb, meta)
    print(json.dumps({"out": str(args.out), "shape": list(emb.shape), "pairs": len(pairs)}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from pixpref.personalize.names import POOLINGS

    p = subparsers.add_parser(
        "embed-user", help="encode a user's pairwise choices into a user embedding",
        description="Run the VLM over a user's examples (JSONL: prompt, chosen, rejected) and write the "
                    "user embedding as safetensors.",
    )
    p.add_argument("--pairs", required=True, help="JSONL pair file (image paths relative to it)")
    p.add_argument("--out", required=True, help="output USER.safetensors")
    p.add_argument("--vlm", default="toy", help="'toy' (shipped) or a local VLM folder")
    p.add_argument("--pooling", default=None, choices=POOLINGS,
                   help="how hidden states become user tokens (default: what --adapter was trained with)")
    p.add_argument("--head", default=None,
                   help="pooling preference_head: the head, 'toy' or a folder (default: what --adapter was trained with)")
    p.add_argument("--adapter", default="dpo", help="the adapter that will read this profile: dpo, inpo or a folder")
    p.add_argument("--max-pairs", type=int, default=8, help="most examples read in one prompt")
    p.add_argument("--chunk-pairs", type=int, default=0, metavar="N",
                   help="read the pairs N per prompt and average the chunks (0: one prompt; e.g. 4 for more "
                        "pairs than --max-pairs)")
    p.add_argument("--image-size", type=int, default=32, help="images are resized to this (toy: 32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_cmd_embed_user)
