"""Toy-world training and test pairs for the preference scorer, labelled by pixel oracles per dimension.

Each text dimension has an **oracle utility** in [0, 1], computed from pixels alone
(:func:`pixpref.toyworld.oracle.analyse`), so it applies to rendered images and to a model's samples:

    aesthetics  a fixed population taste: 0.40 contrast (object vs background lightness)
                + 0.35 composition (object near the centre) + 0.25 size (medium-large objects)
    alignment   the detected colour and shape against the prompt: 0.5 each (1 when both match)
    detail      0.5 sharpness + 0.5 (1 - noise), sharpness read as crisp (1) from ``crisp_sharpness`` up: the
                oracle's blur fit scatters over crisp renders (std 0.10, 10th percentile 0.86;
                ``python scripts/oracle_sharpness.py``), and two crisp images must not differ in detail
    overall     OVERALL_WEIGHTS: 0.30 aesthetics + 0.45 alignment + 0.25 detail

Blur and pixel noise are detail faults. With ``content_from: clean`` (the default) aesthetics and alignment
are read on each image's *undegraded* pixels (the same scene rendered, or the same sample, before blur and
noise), detail on the pixels shown. Read on the degraded pixels, the measured lightness and size move under
blur or noise (mean |change| 0.06-0.075; ``python scripts/oracle_pair_shift.py``), so 28-38% of pairs that
show one scene with and without a degradation got a decided aesthetics label from measurement error alone.

A pair (a, b) gets, per dimension, P(a preferred) = sigmoid((u_a - u_b) / temperature) (Bradley-Terry)
and a label drawn from it: 1 (a won), 0 (b won), or 0.5 (a tie, when |u_a - u_b| < tie_margin). The
best possible scorer given this label noise reaches the **Bayes ceiling**, the mean over decided pairs of
max(p, 1 - p) (:func:`bayes_ceiling`). Each pair keeps a label for only some dimensions (``label_keep``):
the others are NaN ("not labelled"), as in multi-dimensional human data.

Pair kinds (:data:`RENDER_KINDS`, :data:`MODEL_KINDS`): two renders differing in style; a render against
its blurred / noisy / wrongly coloured / wrongly shaped / moved / resized copy; two independently
degraded renders ("mixed", where dimensions often disagree); and the same with the base model's
samples (degraded in pixel space; "wrong" takes a sample of another prompt).

The ``personal`` dimension is labelled by synthetic users (:mod:`pixpref.toyworld.users`); each pair is
conditioned on the user embedding of 4 *other* pairs of the same user (the user encoder's tokens, or the
user's true weight vector with ``user_encoder: oracle``, an upper bound).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixpref.errors import PixprefError, unknown_name
from pixpref.scorer.conditions import PERSONAL, TEXT_DIMENSIONS

ORACLE_DIMENSIONS = ("aesthetics", "alignment", "detail")
OVERALL_WEIGHTS = {"aesthetics": 0.30, "alignment": 0.45, "detail": 0.25}
RENDER_KINDS = ("style", "blur", "noise", "colour", "shape", "position", "size", "mixed")
MODEL_KINDS = ("model_style", "model_blur", "model_noise", "model_wrong", "model_mixed")
SOURCES = ("render", "model")
CONTENT_SOURCES = ("clean", "pixels")  # ToyLabelConfig.content_from
USER_ENCODERS = ("toy", "oracle", "<VLM folder>")


# ----------------------------------------------------------------------------------------------- oracles


CRISP_SHARPNESS = 0.85  # measured sharpness from which an image counts as crisp (the detail oracle's floor)


def oracle_utilities(images: np.ndarray, prompts: list[str],
                     crisp_sharpness: float = CRISP_SHARPNESS) -> dict[str, np.ndarray]:
    """Oracle utility in [0, 1] per text dimension for uint8 images ``(N, H, W, 3)`` and their prompts.

    ``crisp_sharpness``: measured sharpness at or above which an image is fully sharp (1: the raw measurement).
    """
    if not 0 < crisp_sharpness <= 1:
        raise PixprefError(f"crisp_sharpness must be in (0, 1], got {crisp_sharpness}")
    from pixpref.toyworld.oracle import analyse, parse_prompt
    from pixpref.toyworld.render import BG_LIGHTNESS_RANGE

    if len(images) != len(prompts):
        raise PixprefError(f"got {len(images)} images but {len(prompts)} prompts")
    feats, colours, shapes = analyse(images)
    lo, hi = BG_LIGHTNESS_RANGE
    bg_light = lo + (hi - lo) * feats["bg_lightness"]  # back to HLS lightness, comparable with the object's
    contrast = np.clip(np.abs(feats["obj_lightness"] - bg_light) / 0.6, 0, 1)
    dist = np.hypot(feats["cx"] - 0.5, feats["cy"] - 0.5)
    composition = 1.0 - np.clip(dist / 0.5, 0, 1)
    size_pref = 1.0 - np.clip(np.abs(feats["size"] - 0.75) / 0.75, 0, 1)
    found = feats["area"] > 0
    aesthetics = np.where(found, 0.40 * contrast + 0.35 * composition + 0.25 * size_pref, 0.0)
    wanted = [parse_prompt(p) for p in prompts]
    colour_ok = np.array([c == w[0] for c, w in zip(colours, wanted, strict=True)], dtype=np.float64)
    shape_ok = np.array([s == w[1] for s, w in zip(shapes, wanted, strict=True)], dtype=np.float64)
    alignment = 0.5 * colour_ok + 0.5 * shape_ok
    sharpness = np.clip(feats["sharpness"] / crisp_sharpness, 0.0, 1.0)
    detail = 0.5 * sharpness + 0.5 * (1.0 - feats["noise"])
    out = {"aesthetics": aesthetics, "alignment": alignment, "detail": detail}
    out["overall"] = sum(w * out[d] for d, w in OVERALL_WEIGHTS.items())
    return out


def bt_probability(u_a: np.ndarray, u_b: np.ndarray, temperature: float) -> np.ndarray:
    """Bradley-Terry P(a preferred) = sigmoid((u_a - u_b) / temperature)."""
    if temperature <= 0:
        raise PixprefError(f"temperature must be > 0, got {temperature}")
    diff = (np.asarray(u_a, np.float64) - np.asarray(u_b, np.float64)) / temperature
    return 1.0 / (1.0 + np.exp(-np.clip(diff, -60, 60)))


def draw_labels(u_a: np.ndarray, u_b: np.ndarray, temperature: float, tie_margin: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(P(a preferred), label) per pair; label 1/0 drawn from P, 0.5 where |u_a - u_b| < tie_margin."""
    p = bt_probability(u_a, u_b, temperature)
    label = (rng.random(p.shape) < p).astype(np.float64)
    label[np.abs(np.asarray(u_a) - np.asarray(u_b)) < tie_margin] = 0.5
    return p, label


def bayes_ceiling(p: np.ndarray, labels: np.ndarray) -> float:
    """Expected accuracy of the best scorer given the label noise: mean of max(p, 1 - p) over decided pairs
    (label 0 or 1; ties and NaN are left out, as in the accuracy). nan when no pair is decided."""
    p, labels = np.asarray(p, np.float64), np.asarray(labels, np.float64)
    decided = (labels == 0.0) | (labels == 1.0)
    return float(np.maximum(p, 1 - p)[decided].mean()) if decided.any() else float("nan")


# ----------------------------------------------------------------------------------------------- config


@dataclass
class ToyLabelConfig:
    """How many toy pairs of which kinds, and how they are labelled (YAML section ``data``)."""

    seed: int = 0
    image_size: int = 32
    combos: str = "seen"  # content combinations: seen / held_out / all
    render_pairs: int = 4000  # renderer pairs, kinds drawn uniformly from render_kinds
    render_kinds: list[str] = dataclasses.field(default_factory=lambda: list(RENDER_KINDS))
    model_pairs: int = 0  # pairs of the base model's samples (needs base_model)
    model_kinds: list[str] = dataclasses.field(default_factory=lambda: list(MODEL_KINDS))
    base_model: str = "toy"  # "toy" (shipped) or a pipeline folder
    samples_per_combo: int = 12
    sample_steps: int = 15
    sample_guidance: float = 2.0
    temperature: float = 0.025  # Bradley-Terry temperature of the dimension oracles (utilities in [0, 1])
    tie_margin: float = 0.05  # |u_a - u_b| below this is a tie (label 0.5)
    crisp_sharpness: float = CRISP_SHARPNESS  # detail oracle: measured sharpness from which an image is crisp
    # which pixels the aesthetics and alignment oracles read: "clean" (before blur / pixel noise) or "pixels"
    content_from: str = "clean"
    label_keep: float = 0.8  # chance that a pair keeps its label on each text dimension
    users: int = 0  # synthetic population size (0: no personal pairs)
    user_seed: int = 0  # seed of the population (train / unseen split)
    user_split: str = "train"  # which users' pairs: train / unseen
    pairs_per_user: int = 24  # personal pairs per user (multiple of context_pairs)
    context_pairs: int = 4  # pairs per user-embedding context (PPD: 4)
    user_tie_margin: float = 0.05
    user_encoder: str = "toy"  # "toy" VLM, a VLM folder, or "oracle" (true weight vector, 1 token)
    # how the VLM's hidden states become user tokens (pixpref.personalize.user_encoder.POOLINGS); recorded in
    # the saved scorer's user_encoder.json so callers embed users the same way
    user_pooling: str = "last_token_all_layers"
    user_head: str = "toy"  # user_pooling=preference_head: the preference head (shipped name or folder)

    def __post_init__(self) -> None:
        from pixpref.personalize.user_encoder import POOLINGS
        from pixpref.toyworld.scene import content_combos
        from pixpref.toyworld.users import SPLITS

        if self.user_pooling not in POOLINGS:
            raise unknown_name("data.user_pooling", self.user_pooling, POOLINGS)

        content_combos(self.combos)
        for kind in self.render_kinds:
            if kind not in RENDER_KINDS:
                raise unknown_name("render pair kind", kind, RENDER_KINDS)
        for kind in self.model_kinds:
            if kind not in MODEL_KINDS:
                raise unknown_name("model pair kind", kind, MODEL_KINDS)
        if self.render_pairs < 0 or self.model_pairs < 0 or self.users < 0:
            raise PixprefError("render_pairs, model_pairs and users must be >= 0")
        if self.render_pairs and not self.render_kinds:
            raise PixprefError(f"render_pairs > 0 needs render_kinds; valid: {', '.join(RENDER_KINDS)}")
        if self.model_pairs and not self.model_kinds:
            raise PixprefError(f"model_pairs > 0 needs model_kinds; valid: {', '.join(MODEL_KINDS)}")
        if self.temperature <= 0:
            raise PixprefError(f"data.temperature must be > 0, got {self.temperature}")
        if self.content_from not in CONTENT_SOURCES:
            raise unknown_name("data.content_from", self.content_from, CONTENT_SOURCES)
        if not 0 < self.crisp_sharpness <= 1:
            raise PixprefError(f"data.crisp_sharpness must be in (0, 1], got {self.crisp_sharpness}")
        if self.tie_margin < 0 or self.user_tie_margin < 0:
            raise PixprefError("tie margins must be >= 0")
        if not 0 < self.label_keep <= 1:
            raise PixprefError(f"data.label_keep must be in (0, 1], got {self.label_keep}")
        if self.user_split not in SPLITS:
            raise unknown_name("user split", self.user_split, SPLITS)
        if self.context_pairs < 1:
            raise PixprefError(f"data.context_pairs must be >= 1, got {self.context_pairs}")
        if self.users and self.pairs_per_user < 2 * self.context_pairs and self.user_split == "train":
            raise PixprefError("pairs_per_user must hold at least two contexts (2 x context_pairs) for "
                               "training users: each pair is conditioned on other pairs")
        if self.samples_per_combo < 2:
            raise PixprefError(f"data.samples_per_combo must be >= 2, got {self.samples_per_combo}")


# ------------------------------------------------------------------------------------------------ pairs


@dataclass
class ToyPairs:
    """Pairs of images with per-dimension labels. Row i: images[i, 0] is "a", images[i, 1] is "b".

    ``labels[d]`` / ``probs[d]``: label and P(a preferred) on dimension d (NaN: not labelled).
    ``context[i]``: row of ``embeddings`` conditioning the personal label of pair i (-1: none).
    """

    images: np.ndarray  # (N, 2, H, W, 3) uint8
    prompts: list[str]
    kinds: list[str]
    sources: list[str]  # "render" / "model"
    labels: dict[str, np.ndarray]
    probs: dict[str, np.ndarray]
    user: np.ndarray  # (N,) int, -1 for non-personal pairs
    context: np.ndarray  # (N,) int, -1 for non-personal pairs
    embeddings: np.ndarray  # (E, T, D) float32 user embeddings (E may be 0)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def dimensions(self) -> list[str]:
        """Dimensions with at least one label."""
        return [d for d, v in self.labels.items() if np.isfinite(v).any()]

    def subset(self, idx: np.ndarray) -> ToyPairs:
        idx = np.asarray(idx, dtype=np.int64)
        return ToyPairs(self.images[idx], [self.prompts[i] for i in idx], [self.kinds[i] for i in idx],
                        [self.sources[i] for i in idx], {d: v[idx] for d, v in self.labels.items()},
                        {d: v[idx] for d, v in self.probs.items()}, self.user[idx], self.context[idx],
                        self.embeddings, dict(self.meta))

    def save(self, path: str | Path) -> Path:
        """One compressed ``.npz`` (no pickles)."""
        from pixpref.io_utils import atomic_path

        arrays = {"images": self.images, "prompts": np.array(self.prompts), "kinds": np.array(self.kinds),
                  "sources": np.array(self.sources), "user": self.user, "context": self.context,
                  "embeddings": self.embeddings, "meta": np.array(repr_json(self.meta))}
        for d in self.labels:
            arrays[f"label_{d}"], arrays[f"prob_{d}"] = self.labels[d], self.probs[d]
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ToyPairs:
        import json

        path = Path(path)
        if not path.is_file():
            raise PixprefError(f"toy pairs file not found: {path}")
        with np.load(path, allow_pickle=False) as z:
            dims = [k[len("label_"):] for k in z.files if k.startswith("label_")]
            return cls(z["images"], z["prompts"].tolist(), z["kinds"].tolist(), z["sources"].tolist(),
                       {d: z[f"label_{d}"] for d in dims}, {d: z[f"prob_{d}"] for d in dims},
                       z["user"], z["context"], z["embeddings"], json.loads(str(z["meta"])))


def repr_json(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str)


def concat(parts: list[ToyPairs]) -> ToyPairs:
    """Join pair sets (their user embeddings are stacked and the context rows shifted)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        raise PixprefError("no pairs to join")
    dims = list(dict.fromkeys(d for p in parts for d in p.labels))
    n_all = [len(p) for p in parts]
    labels, probs, contexts, offset = {}, {}, [], 0
    for d in dims:
        labels[d] = np.concatenate([p.labels.get(d, np.full(n, np.nan)) for p, n in zip(parts, n_all)])
        probs[d] = np.concatenate([p.probs.get(d, np.full(n, np.nan)) for p, n in zip(parts, n_all)])
    emb = [p.embeddings for p in parts if p.embeddings.size]
    for p in parts:
        contexts.append(np.where(p.context >= 0, p.context + offset, -1))
        offset += len(p.embeddings) if p.embeddings.size else 0
    if len({e.shape[1:] for e in emb}) > 1:
        raise PixprefError("pair sets hold user embeddings of different shapes")
    return ToyPairs(
        np.concatenate([p.images for p in parts]), [x for p in parts for x in p.prompts],
        [x for p in parts for x in p.kinds], [x for p in parts for x in p.sources], labels, probs,
        np.concatenate([p.user for p in parts]), np.concatenate(contexts),
        np.concatenate(emb) if emb else np.zeros((0, 1, 1), np.float32), dict(parts[0].meta))


def pair_utilities(images: np.ndarray, prompts: list[str], clean: np.ndarray | None = None,
                   crisp_sharpness: float = CRISP_SHARPNESS) -> dict[str, np.ndarray]:
    """Oracle utilities ``(N, 2)`` per text dimension of pairs ``images (N, 2, H, W, 3)``.

    ``clean``: the same pairs before blur and pixel noise; aesthetics and alignment are then read on them
    and detail on ``images`` (overall recombined), as ``content_from: clean`` labels them.
    """
    n = len(images)
    two = [p for p in prompts for _ in range(2)]
    util = oracle_utilities(images.reshape(n * 2, *images.shape[2:]), two, crisp_sharpness)
    if clean is not None:
        if clean.shape != images.shape:
            raise PixprefError(f"clean images {clean.shape} do not match the pairs {images.shape}")
        content = oracle_utilities(clean.reshape(n * 2, *clean.shape[2:]), two, crisp_sharpness)
        util["aesthetics"], util["alignment"] = content["aesthetics"], content["alignment"]
        util["overall"] = sum(w * util[d] for d, w in OVERALL_WEIGHTS.items())
    return {d: u.reshape(n, 2) for d, u in util.items()}


def _label_text_dims(images: np.ndarray, prompts: list[str], cfg: ToyLabelConfig, rng: np.random.Generator,
                     keep: bool = True, clean: np.ndarray | None = None
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Oracle labels for pairs ``images (N, 2, H, W, 3)``; with ``keep`` some are dropped (NaN)."""
    n = len(images)
    util = pair_utilities(images, prompts, clean if cfg.content_from == "clean" else None, cfg.crisp_sharpness)
    labels, probs = {}, {}
    for d in TEXT_DIMENSIONS:
        u = util[d]
        probs[d], labels[d] = draw_labels(u[:, 0], u[:, 1], cfg.temperature, cfg.tie_margin, rng)
        if keep and cfg.label_keep < 1:
            labels[d][rng.random(n) >= cfg.label_keep] = np.nan
    return labels, probs


def _other(rng: np.random.Generator, options: tuple[str, ...] | list[str], current: str) -> str:
    choices = [o for o in options if o != current]
    return choices[rng.integers(len(choices))]


def _degrade_scene(scene: Any, rng: np.random.Generator) -> Any:
    """Random degradations for 'mixed' pairs: blur, noise, wrong colour/shape, each with some chance."""
    from pixpref.toyworld.scene import COLOURS, SHAPES

    if rng.random() < 0.4:
        scene = scene.replace(blur=float(rng.uniform(0.5, 1.6)))
    if rng.random() < 0.4:
        scene = scene.replace(noise=float(rng.uniform(0.04, 0.2)))
    if rng.random() < 0.15:
        scene = scene.replace(colour=_other(rng, list(COLOURS), scene.colour))
    if rng.random() < 0.15:
        scene = scene.replace(shape=_other(rng, SHAPES, scene.shape))
    return scene


def render_pair(kind: str, rng: np.random.Generator, size: int,
                combos: str) -> tuple[str, np.ndarray, np.ndarray]:
    """One renderer pair of ``kind`` -> (prompt, images (2, H, W, 3), clean (2, H, W, 3)); "a" is the
    cleaner/base image; ``clean`` renders the same two scenes without blur and noise."""
    from pixpref.toyworld.render import render
    from pixpref.toyworld.scene import COLOURS, PROMPT_TEMPLATES, SHAPES, SIZE_RANGE, sample_scene

    base = sample_scene(rng, combos=combos)
    prompt = base.prompt(int(rng.integers(len(PROMPT_TEMPLATES))))
    if kind == "style":
        other = sample_scene(rng, shape=base.shape, colour=base.colour, combos=combos)
    elif kind == "blur":
        other = base.replace(blur=float(rng.uniform(0.5, 1.6)))
    elif kind == "noise":
        other = base.replace(noise=float(rng.uniform(0.04, 0.2)))
    elif kind == "colour":
        other = base.replace(colour=_other(rng, list(COLOURS), base.colour))
    elif kind == "shape":
        other = base.replace(shape=_other(rng, SHAPES, base.shape))
    elif kind == "position":
        other = base.replace(cx=float(rng.uniform(0.22, 0.78)), cy=float(rng.uniform(0.22, 0.78)))
    elif kind == "size":
        other = base.replace(size=float(rng.uniform(*SIZE_RANGE)))
    elif kind == "mixed":
        other = _degrade_scene(sample_scene(rng, shape=base.shape, colour=base.colour, combos=combos), rng)
        base = _degrade_scene(base, rng)
    else:
        raise unknown_name("render pair kind", kind, RENDER_KINDS)
    noise_rng = np.random.default_rng(rng.integers(2**32))
    images = np.stack([render(base, size, noise_rng), render(other, size, noise_rng)])
    clean = np.stack([render(sc.replace(blur=0.0, noise=0.0), size) for sc in (base, other)])
    return prompt, images, clean


def degrade_pixels(image: np.ndarray, rng: np.random.Generator, blur: float = 0.0, noise: float = 0.0) -> np.ndarray:
    """Blur (Gaussian, radius ``blur`` px at 32 px) and/or add Gaussian noise (std ``noise``) to a uint8 image."""
    from PIL import Image, ImageFilter

    out = image
    if blur > 0:
        radius = blur * image.shape[0] / 32
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(radius=radius)))
    if noise > 0:
        x = out.astype(np.float32) / 255 + rng.normal(0, noise, out.shape).astype(np.float32)
        out = np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


def _random_degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    blur = float(rng.uniform(0.5, 1.6)) if rng.random() < 0.4 else 0.0
    noise = float(rng.uniform(0.04, 0.2)) if rng.random() < 0.4 else 0.0
    return degrade_pixels(image, rng, blur, noise)


def model_pair(kind: str, pool: Any, rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray]:
    """One pair of base-model samples of ``kind`` (see :data:`MODEL_KINDS`) -> (prompt, images (2, H, W, 3),
    clean (2, H, W, 3)): ``clean`` holds the samples before pixel blur and noise."""
    from pixpref.toyworld.scene import PROMPT_TEMPLATES

    keys = sorted(pool.images)
    colour, shape = keys[rng.integers(len(keys))]
    prompt = PROMPT_TEMPLATES[rng.integers(len(PROMPT_TEMPLATES))].format(colour=colour, shape=shape)
    own = pool.images[(colour, shape)]
    i, j = rng.choice(len(own), size=2, replace=False)
    a, b = own[i], own[j]
    clean = None
    if kind == "model_blur":
        b = degrade_pixels(a, rng, blur=float(rng.uniform(0.5, 1.6)))
    elif kind == "model_noise":
        b = degrade_pixels(a, rng, noise=float(rng.uniform(0.04, 0.2)))
    elif kind == "model_wrong":  # a sample of a prompt sharing the colour or the shape
        near = [k for k in keys if k != (colour, shape) and (k[0] == colour or k[1] == shape)] or \
            [k for k in keys if k != (colour, shape)]
        if near:
            other = pool.images[near[rng.integers(len(near))]]
            b = other[rng.integers(len(other))]
    elif kind == "model_mixed":
        clean = np.stack([a, b])
        a, b = _random_degrade(a, rng), _random_degrade(b, rng)
    elif kind != "model_style":
        raise unknown_name("model pair kind", kind, MODEL_KINDS)
    if clean is None:  # blur / noise degrade a copy of a; wrong / style pairs are not degraded
        clean = np.stack([a, a]) if kind in ("model_blur", "model_noise") else np.stack([a, b])
    return prompt, np.stack([a, b]), clean


def _finish(prompts: list[str], images: list[np.ndarray], kinds: list[str], source: str, cfg: ToyLabelConfig,
            rng: np.random.Generator, clean: list[np.ndarray]) -> ToyPairs:
    imgs, cln = np.stack(images), np.stack(clean)  # (N, 2, H, W, 3) each
    swap = rng.random(len(imgs)) < 0.5  # the cleaner image is not always "a"
    imgs[swap] = imgs[swap][:, ::-1]
    cln[swap] = cln[swap][:, ::-1]
    labels, probs = _label_text_dims(imgs, prompts, cfg, rng, clean=cln)
    n = len(imgs)
    return ToyPairs(imgs, prompts, kinds, [source] * n, labels, probs, np.full(n, -1), np.full(n, -1),
                    np.zeros((0, 1, 1), np.float32), {"temperature": cfg.temperature, "tie_margin": cfg.tie_margin})


def make_render_pairs(cfg: ToyLabelConfig, progress: bool = False) -> ToyPairs:
    """``cfg.render_pairs`` renderer pairs, kinds drawn uniformly, labelled on every text dimension."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng([cfg.seed, 1])
    prompts, images, clean, kinds = [], [], [], []
    for _ in tqdm(range(cfg.render_pairs), desc="render pairs", disable=not progress):
        kind = cfg.render_kinds[rng.integers(len(cfg.render_kinds))]
        prompt, pair, undegraded = render_pair(kind, rng, cfg.image_size, cfg.combos)
        prompts.append(prompt)
        images.append(pair)
        clean.append(undegraded)
        kinds.append(kind)
    return _finish(prompts, images, kinds, "render", cfg, rng, clean)


def make_model_pairs(cfg: ToyLabelConfig, pool: Any) -> ToyPairs:
    """``cfg.model_pairs`` pairs of the base model's samples (``pool``: a SamplePool)."""
    rng = np.random.default_rng([cfg.seed, 2])
    prompts, images, clean, kinds = [], [], [], []
    for _ in range(cfg.model_pairs):
        kind = cfg.model_kinds[rng.integers(len(cfg.model_kinds))]
        prompt, pair, undegraded = model_pair(kind, pool, rng)
        prompts.append(prompt)
        images.append(pair)
        clean.append(undegraded)
        kinds.append(kind)
    return _finish(prompts, images, kinds, "model", cfg, rng, clean)


def sample_pool(cfg: ToyLabelConfig, progress: bool = False) -> Any:
    """Generate the base model's samples for every content combination of ``cfg.combos``."""
    from pixpref.models.diffusion import load_pipeline
    from pixpref.toyworld.model_source import SamplePool

    pipe = load_pipeline(cfg.base_model)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return SamplePool.generate(pipe, per_combo=cfg.samples_per_combo, steps=cfg.sample_steps,
                               guidance_scale=cfg.sample_guidance, seed=cfg.seed, combos=cfg.combos,
                               progress=progress)


# -------------------------------------------------------------------------------------- personal pairs


def user_embedder(name: str, pooling: str = "last_token_all_layers", head: str = "toy") -> Any:
    """``name`` -> callable(users, contexts) -> (U, T, D) float32 array. ``oracle``: true weight vectors."""
    if name == "oracle":
        def oracle(users: list[Any], contexts: list[list[tuple]]) -> np.ndarray:
            return np.stack([u.weights_vector()[None].astype(np.float32) for u in users])

        return oracle
    from pixpref.personalize.user_encoder import UserEncoder, UserEncoderConfig

    encoder = UserEncoder.from_pretrained(name, UserEncoderConfig(vlm=name, pooling=pooling, head=head))

    def vlm(users: list[Any], contexts: list[list[tuple]]) -> np.ndarray:
        return encoder.encode(contexts).numpy().astype(np.float32)

    return vlm


def make_personal_pairs(cfg: ToyLabelConfig, embed: Any = None, progress: bool = False) -> ToyPairs:
    """Pairs labelled by the synthetic users of ``cfg.user_split``, each with a user-embedding context.

    Training users: the pairs are cut into chunks of ``context_pairs``; pair i in chunk j is conditioned
    on chunk j + 1 (cyclic), never on itself. Unseen users: the first chunk is the context and the other
    pairs are the held-out pairs (only they are returned).
    """
    from tqdm.auto import tqdm

    from pixpref.toyworld.oracle import measure
    from pixpref.toyworld.pairs import iter_user_rows
    from pixpref.toyworld.users import sample_population

    population = sample_population(cfg.users, seed=cfg.user_seed)
    users = [u for u in population if u.split == cfg.user_split]
    if not users:
        raise PixprefError(f"the population of {cfg.users} users has no {cfg.user_split!r} users")
    embed = embed or user_embedder(cfg.user_encoder, cfg.user_pooling, cfg.user_head)
    k = cfg.context_pairs
    rows_all, contexts, owners = [], [], []
    for user in tqdm(users, desc="user pairs", disable=not progress):
        rows = list(iter_user_rows(user, cfg.pairs_per_user, cfg.seed, image_size=cfg.image_size,
                                   tie_margin=cfg.user_tie_margin, combos=cfg.combos))
        chunks = [rows[i:i + k] for i in range(0, len(rows) - k + 1, k)]
        if cfg.user_split == "train":
            targets = [(row, len(contexts) + (j + 1) % len(chunks)) for j, ch in enumerate(chunks) for row in ch]
        else:
            targets = [(row, len(contexts)) for ch in chunks[1:] for row in ch]
            chunks = chunks[:1]
        for ch in chunks:
            contexts.append([(r["caption"], *((r["jpg_0"], r["jpg_1"]) if r["label_0"] >= 0.5 else
                                              (r["jpg_1"], r["jpg_0"]))) for r in ch])
            owners.append(user)
        rows_all += [(user, row, ctx) for row, ctx in targets]
    emb = embed(owners, contexts)  # (E, T, D)
    images = np.stack([np.stack([r["jpg_0"], r["jpg_1"]]) for _, r, _ in rows_all])
    n = len(images)
    flat = measure(images.reshape(n * 2, *images.shape[2:]))
    probs = np.empty(n)
    for user in users:  # utilities per user (their own terms), vectorised over their pairs
        idx = np.array([i for i, (u, _, _) in enumerate(rows_all) if u.id == user.id])
        if len(idx) == 0:
            continue
        sel = np.concatenate([2 * idx, 2 * idx + 1])
        util = user.utility({f: v[sel] for f, v in flat.items()})
        probs[idx] = bt_probability(util[:len(idx)], util[len(idx):], user.temperature)
    labels = np.array([r["label_0"] for _, r, _ in rows_all], dtype=np.float64)
    nan = np.full(n, np.nan)
    return ToyPairs(images, [r["caption"] for _, r, _ in rows_all], ["user"] * n, ["render"] * n,
                    {**{d: nan.copy() for d in TEXT_DIMENSIONS}, PERSONAL: labels},
                    {**{d: nan.copy() for d in TEXT_DIMENSIONS}, PERSONAL: probs},
                    np.array([u.id for u, _, _ in rows_all]), np.array([c for _, _, c in rows_all]),
                    np.asarray(emb, np.float32), {"user_encoder": cfg.user_encoder})


def make_pairs(cfg: ToyLabelConfig, pool: Any = None, embed: Any = None, progress: bool = False) -> ToyPairs:
    """Renderer pairs + model-sample pairs (``pool``, generated if needed) + personal pairs, per ``cfg``."""
    parts = []
    if cfg.render_pairs:
        parts.append(make_render_pairs(cfg, progress))
    if cfg.model_pairs:
        parts.append(make_model_pairs(cfg, pool if pool is not None else sample_pool(cfg, progress)))
    if cfg.users:
        parts.append(make_personal_pairs(cfg, embed, progress))
    if not parts:
        raise PixprefError("no pairs configured: set render_pairs, model_pairs or users above 0")
    out = concat(parts)
    out.meta.update({"temperature": cfg.temperature, "tie_margin": cfg.tie_margin, "seed": cfg.seed,
                     "user_encoder": cfg.user_encoder if cfg.users else None})
    return out
