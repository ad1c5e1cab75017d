"""Pretraining of the embedded toy-world models (base diffusion model, VLM, CLIP)."""
