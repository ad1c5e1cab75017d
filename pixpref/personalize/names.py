"""Names the personalization modules validate against (kept import-light for the CLI)."""

POOLINGS = ("last_token_all_layers", "last_token_last_layer", "mean_last_layer", "image_contrast_all_layers")
