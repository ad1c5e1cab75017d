"""Images for toy-world preference pairs drawn from a text-to-image model's own samples.

PPD trains on pairs of the base model's samples, so the toy world's training pairs do the same: a pool
of samples per content combination (colour, shape) is generated once, then each pair draws two
different images from the pool of its prompt's content.

    source = SamplePool.generate(pipe, per_combo=32, steps=15, seed=0)
    write_pairs(out, users, 40, seed=0, image_source=source, model_name="toy-base")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pixpref.errors import PixprefError
from pixpref.toyworld.scene import content_combos


class SamplePool:
    """(colour, shape) -> (n, H, W, 3) uint8 samples; callable as an ``ImageSource``."""

    __name__ = "model-samples"

    def __init__(self, images: dict[tuple[str, str], np.ndarray]):
        if not images:
            raise PixprefError("a sample pool needs at least one content combination")
        self.images = images

    @classmethod
    def generate(cls, pipe, per_combo: int = 32, steps: int = 15, guidance_scale: float = 2.0, seed: int = 0,
                 combos: str = "seen", batch: int = 32, progress: bool = True) -> SamplePool:
        import torch
        from tqdm.auto import tqdm

        if per_combo < 2:
            raise PixprefError(f"per_combo must be >= 2 (a pair needs two images), got {per_combo}")
        out: dict[tuple[str, str], np.ndarray] = {}
        todo = content_combos(combos)
        for i, (colour, shape) in enumerate(tqdm(todo, desc="sample pool", disable=not progress)):
            chunks = []
            for start in range(0, per_combo, batch):
                n = min(batch, per_combo - start)
                gen = torch.Generator().manual_seed(seed * 100_003 + i * 1009 + start)
                ims = pipe(f"a {colour} {shape}", num_images_per_prompt=n, num_inference_steps=steps,
                           guidance_scale=guidance_scale, generator=gen, output_type="np").images
                chunks.append((np.asarray(ims) * 255 + 0.5).clip(0, 255).astype(np.uint8))
            out[(colour, shape)] = np.concatenate(chunks)
        return cls(out)

    def save(self, path: str | Path) -> Path:
        from pixpref.io_utils import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **{f"{c}|{s}": v for (c, s), v in self.images.items()})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SamplePool:
        path = Path(path)
        if not path.is_file():
            raise PixprefError(f"sample pool not found: {path}")
        with np.load(path, allow_pickle=False) as data:
            return cls({tuple(k.split("|")): data[k] for k in data.files})

    def __call__(self, prompt: str, n: int, rng: np.random.Generator) -> np.ndarray:
        from pixpref.toyworld.oracle import parse_prompt

        key = parse_prompt(prompt)
        if key not in self.images:
            raise PixprefError(f"no samples for {key} in the pool; it holds {len(self.images)} combinations")
        pool = self.images[key]
        if n > len(pool):
            raise PixprefError(f"asked for {n} images of {key}, the pool holds {len(pool)}")
        return pool[rng.choice(len(pool), size=n, replace=False)]
