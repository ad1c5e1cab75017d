"""pixpref: personalized preference fine-tuning of text-to-image diffusion models.

The package is laid out along the pipeline:

    data/         preference pairs (Pick-a-Pic v2 parquet, JSONL folders), few-shot grouping
    toyworld/     the procedural image world with synthetic users (the embedded default)
    models/       loading/building the base diffusion model, VLM and CLIP (real and toy)
    personalize/  user encoder (VLM -> user tokens), user cross-attention adapter, losses, pipeline
    scorer/       multi-dimensional preference scorer (MPS-style, plus a personal dimension)

Nothing heavy is imported at package import time.
"""

__version__ = "0.1.0"

from pixpref.errors import PixprefError  # noqa: E402

__all__ = ["PixprefError", "__version__"]
