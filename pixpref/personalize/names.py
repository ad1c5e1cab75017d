"""Names the personalization modules validate against (kept import-light for the CLI)."""

POOLINGS = ("last_token_all_layers", "last_token_last_layer", "mean_last_layer", "image_contrast_all_layers",
            "preference_head")
# How the user branch meets classifier-free guidance (the UNet batch is [unconditional; conditional]):
#   "joint": the user branch is off in the unconditional half, so guidance amplifies text *and* user
#            together, eps = eps(no text, no user) + g * (eps(text, user) - eps(no text, no user))
#            (IP-Adapter's convention: its unconditional half sees a zero image embedding);
#   "text":  user tokens in both halves, so guidance amplifies the text only and the user's effect is
#            what the adapter alone adds (the default: the shipped adapters were measured this way; on the
#            true-weights adapter "joint" measured 0.698 vs 0.681, inside each other's 95% intervals).
USER_GUIDANCE_MODES = ("joint", "text")
