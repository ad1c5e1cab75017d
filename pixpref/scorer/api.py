"""``PreferenceScorer``: load a trained scorer, score images per dimension, compare two image sets.

    scorer = PreferenceScorer.from_pretrained("toy")            # or a folder from save_pretrained
    scores = scorer.score(images, "a red circle")                # {"aesthetics": (N,), ..., "overall": (N,)}
    scores = scorer.score(images, prompts, ["personal"], user="USER.safetensors")
    rates = scorer.compare(images_a, images_b, prompts)          # {dimension: WinRate(a over b, 95% CI)}

A saved scorer is a folder with ``scorer_config.json`` (architecture, condition words, the open_clip backbone
config) and ``model.safetensors``: all weights, or (``include_backbone=False``) only the head and the trained
parts of the backbone, with a reference to the backbone's weights file and its SHA-256 (the shipped toy
scorer refers to the shipped toy CLIP this way). Pickled checkpoints are refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixpref.config import from_dict, to_dict
from pixpref.errors import PixprefError, unknown_name
from pixpref.io_utils import atomic_path, read_json
from pixpref.scorer.conditions import PERSONAL, check_dimensions
from pixpref.scorer.model import ScorerConfig, ScorerModel, build_backbone

CONFIG_NAME = "scorer_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "pixpref-scorer"
FORMAT_VERSION = 1
TOY_SCORER_DIR = Path(__file__).resolve().parent.parent / "pretrained" / "toy" / "scorer"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")

ImageInput = (
    Any  # list of PIL images / paths / arrays / tensors, a uint8 array (N, H, W, 3), a tensor (N, 3, H, W)
)


@dataclass(frozen=True)
class WinRate:
    """Win rate of set a over set b on one dimension (ties count half) with a 95% Wilson interval."""

    win_rate: float
    ci_low: float
    ci_high: float
    wins: int
    ties: int
    losses: int
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion; ``successes`` may be fractional (ties counted as half).

    For whole counts it equals ``scipy.stats.binomtest(k, n).proportion_ci(confidence, method="wilson")``.
    """
    from scipy.stats import norm

    if n <= 0:
        raise PixprefError("a win rate needs at least one pair")
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------------------------------------------------
# input normalisation


def _image_count(images: ImageInput) -> int:
    if isinstance(images, (torch.Tensor, np.ndarray)):
        if images.ndim == 3:
            return 1
        if images.ndim != 4:
            raise PixprefError(f"an image batch must have 4 dimensions, got shape {tuple(images.shape)}")
        n = images.shape[0]
    elif isinstance(images, (str, Path)) or hasattr(images, "convert"):
        return 1
    elif isinstance(images, Sequence):
        n = len(images)
    else:
        raise PixprefError(f"images must be a list, a numpy array or a tensor, got {type(images).__name__}")
    if n == 0:
        raise PixprefError("no images given (empty image list)")
    return n


def _as_list(images: ImageInput) -> Sequence[Any]:
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return images if images.ndim == 4 else images[None]
    if isinstance(images, (str, Path)) or hasattr(images, "convert"):
        return [images]
    return images


def _to_chw(image: Any, where: str) -> torch.Tensor:
    """One image (PIL, path, HWC array, CHW tensor) -> float tensor (3, H, W) in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as im:
                image = im.convert("RGB")
        except FileNotFoundError:
            raise PixprefError(f"{where}: image file not found: {image}") from None
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
            raise PixprefError(f"{where}: cannot read image file {image}: {str(e).splitlines()[0]}") from None
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise PixprefError(f"{where}: numpy images must have shape (H, W, 3), got {image.shape}")
        image = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # copy: PIL arrays are read-only
    if not isinstance(image, torch.Tensor):
        raise PixprefError(
            f"{where}: unsupported image type {type(image).__name__}; use PIL, a path, numpy or torch"
        )
    if image.ndim != 3 or image.shape[0] != 3:
        raise PixprefError(f"{where}: image tensors must have shape (3, H, W), got {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    if not image.is_floating_point():
        raise PixprefError(f"{where}: image tensors must be uint8 or float, got {image.dtype}")
    image = image.float()
    if not bool(torch.isfinite(image).all()):
        raise PixprefError(f"{where}: image contains NaN or infinite values")
    if image.min() < -1e-3 or image.max() > 1 + 1e-3:
        raise PixprefError(
            f"{where}: float images must be in [0, 1], got [{image.min():.3g}, {image.max():.3g}]"
        )
    return image.clamp(0, 1)


def _prompt_list(prompts: str | Sequence[str], n: int) -> list[str]:
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise PixprefError(f"got {len(prompts)} prompts for {n} images; give one prompt, or one per image")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise PixprefError(f"prompt {i} is {type(p).__name__}, expected a string")
    return prompts


def user_batch(user: str | Path | torch.Tensor, n: int, user_dim: int) -> torch.Tensor:
    """User embedding (T, D), (1, T, D), (N, T, D) or a USER.safetensors path -> float tensor (N, T, D)."""
    from pixpref.personalize.embeddings import check_embedding, load_user_embedding

    if isinstance(user, (str, Path)):
        user, _ = load_user_embedding(user, expected_dim=user_dim)
    if not isinstance(user, torch.Tensor) or not user.is_floating_point():
        raise PixprefError(f"user must be a float tensor or a USER.safetensors path, got {user!r:.80}")
    user = check_embedding(user, expected_dim=user_dim)
    if user.ndim == 2:
        user = user[None]
    if user.shape[0] not in (1, n):
        raise PixprefError(
            f"user embedding holds {user.shape[0]} users for {n} images; give one or one per image"
        )
    return user.float().expand(n, -1, -1)


# ---------------------------------------------------------------------------------------------------------
# loading


def user_encoder_spec(name_or_path: str | Path, default: dict[str, Any]) -> dict[str, Any]:
    """How scorer ``name_or_path``'s ``personal`` dimension embeds users: the ``user_encoder.json`` saved
    beside it by train/train_scorer.py, else ``default`` (scorers saved before that file existed)."""
    from pixpref.personalize.embeddings import USER_ENCODER_SPEC, read_user_encoder_spec

    folder = _resolve_folder(name_or_path)
    return read_user_encoder_spec(folder) if (folder / USER_ENCODER_SPEC).is_file() else default


def _refuse_pickle(path: Path) -> PixprefError:
    """Explain why a pickled checkpoint is not loaded (trying it only with weights_only=True)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means: not a plain tensor file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return PixprefError(
            f"{path} is a pickled file that torch.load(weights_only=True) refuses ({reason[:160]}); pixpref never "
            f"unpickles objects: load a folder with {CONFIG_NAME} + {WEIGHTS_NAME} (safetensors) written by "
            "PreferenceScorer.save_pretrained"
        )
    return PixprefError(
        f"{path} is a PyTorch checkpoint, not a scorer folder; pixpref loads scorers from a folder with "
        f"{CONFIG_NAME} + {WEIGHTS_NAME} (safetensors) written by PreferenceScorer.save_pretrained"
    )


def _resolve_folder(name_or_path: str | Path) -> Path:
    if str(name_or_path) == "toy":
        if not (TOY_SCORER_DIR / CONFIG_NAME).is_file():
            raise PixprefError(
                f"the toy scorer is not in this installation (expected {TOY_SCORER_DIR}); train it first, "
                "or pass a folder written by PreferenceScorer.save_pretrained"
            )
        return TOY_SCORER_DIR
    path = Path(name_or_path)
    if path.is_file():
        if path.name == CONFIG_NAME:
            return path.parent
        if path.suffix == ".safetensors":
            raise PixprefError(f"pass the scorer folder holding {CONFIG_NAME}, not the weights file {path}")
        raise _refuse_pickle(path)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise PixprefError(
                f"folder {path} has no {CONFIG_NAME}; is it a scorer written by save_pretrained?"
            )
        if not (path / WEIGHTS_NAME).is_file():
            pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise _refuse_pickle(pickles[0])
            raise PixprefError(f"folder {path} has no {WEIGHTS_NAME}")
        return path
    raise unknown_name("scorer", str(name_or_path), ["toy", "<folder with scorer_config.json>"])


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _backbone_reference(model: ScorerModel) -> dict[str, str]:
    """{"backbone", "weights", "sha256"} of the file the frozen backbone was loaded from."""
    from pixpref.scorer.model import resolve_backbone

    cfg = model.config
    _, found = resolve_backbone(cfg.backbone)
    weights = Path(cfg.backbone_weights) if cfg.backbone_weights else found
    if weights is None or not weights.is_file():
        raise PixprefError(
            f"cannot save the scorer without its backbone: backbone {cfg.backbone!r} has no weights file to "
            "refer to; save with include_backbone=True"
        )
    if not model.config.freeze_backbone:
        raise PixprefError("a fully trained backbone must be saved: use include_backbone=True")
    # "toy" stays a name (the shipped folder moves with the package); other files are stored as paths
    where = "" if cfg.backbone_weights is None and cfg.backbone == "toy" else str(weights.resolve())
    return {"backbone": cfg.backbone, "weights": where, "sha256": _sha256(weights)}


def _referenced_weights(ref: dict[str, str] | None, folder: Path) -> Path | None:
    """The backbone weights file a partial scorer refers to, after checking its SHA-256."""
    if ref is None:
        return None
    from pixpref.scorer.model import resolve_backbone

    if ref.get("weights"):
        weights = Path(ref["weights"])
    else:
        _, weights = resolve_backbone(ref["backbone"])
    if weights is None or not Path(weights).is_file():
        raise PixprefError(
            f"scorer {folder} stores only its head; its backbone weights ({ref.get('weights') or ref['backbone']}) "
            "are missing"
        )
    if _sha256(Path(weights)) != ref["sha256"]:
        raise PixprefError(
            f"scorer {folder} was trained on other backbone weights than {weights} (SHA-256 differs); "
            "retrain the scorer (train/train_scorer.py) for this backbone"
        )
    return Path(weights)


class PreferenceScorer:
    """Multi-dimensional preference scorer (inference wrapper around :class:`ScorerModel`)."""

    def __init__(self, model: ScorerModel) -> None:
        self.model = model.eval()

    # ----- construction and saving ------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: ScorerConfig) -> PreferenceScorer:
        """A scorer with a fresh head on the configured backbone (the starting point of training)."""
        return cls(ScorerModel.from_config(config))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = "toy",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> PreferenceScorer:
        """Load ``"toy"`` (the shipped scorer) or a folder written by :meth:`save_pretrained`.

        ``dtype`` defaults to float32 (the stored dtype may be float16).
        """
        from safetensors.torch import load_file

        folder = _resolve_folder(name_or_path)
        meta = read_json(folder / CONFIG_NAME)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise PixprefError(
                f"{folder / CONFIG_NAME} is not a pixpref scorer config (no format {FORMAT!r})"
            )
        if meta.get("version") != FORMAT_VERSION:
            raise PixprefError(
                f"scorer format version {meta.get('version')} unsupported; this pixpref reads {FORMAT_VERSION}"
            )
        config = from_dict(ScorerConfig, meta["config"], prefix="config")
        ref = meta.get("backbone_reference")
        clip, tokenizer = build_backbone(meta["backbone_model_cfg"], _referenced_weights(ref, folder))
        model = ScorerModel(config, clip, tokenizer, meta["backbone_model_cfg"])
        state = load_file(str(folder / WEIGHTS_NAME))
        expected = model.state_dict()
        if ref is not None:  # the frozen backbone weights came from the referenced file
            expected = {k: v for k, v in expected.items() if k in state or not k.startswith("clip.")}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        bad_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
        if missing or unexpected or bad_shape:
            raise PixprefError(
                f"{folder / WEIGHTS_NAME} does not match {CONFIG_NAME}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, wrong shape {bad_shape[:5]}"
            )
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=ref is None)
        model.to(device=device, dtype=dtype or torch.float32)
        return cls(model)

    def save_pretrained(
        self, path: str | Path, fp16: bool = False, overwrite: bool = False, include_backbone: bool = True
    ) -> Path:
        """Write ``scorer_config.json`` and ``model.safetensors`` (float16 weights with ``fp16``) to folder ``path``.

        ``include_backbone=False`` stores only the head and the trainable backbone parts, plus a reference
        to the backbone's weights file (``config.backbone``, e.g. the shipped toy CLIP) and its SHA-256;
        loading then rebuilds the frozen backbone from that file and refuses a file that changed.
        """
        from safetensors.torch import save_file

        path = Path(path)
        if path.exists() and not path.is_dir():
            raise PixprefError(f"output {path} exists and is not a folder")
        if (path / CONFIG_NAME).exists() and not overwrite:
            raise PixprefError(
                f"output {path / CONFIG_NAME} already exists; pass overwrite=True (--overwrite) to replace it"
            )
        ref = None if include_backbone else _backbone_reference(self.model)
        trainable = {f"clip.{n}" for n, p in self.model.clip.named_parameters() if p.requires_grad}
        state = {}
        for k, v in self.model.state_dict().items():
            if ref is not None and k.startswith("clip.") and k not in trainable:
                continue
            v = v.detach().to("cpu")
            if fp16 and v.is_floating_point():
                v = v.half()
            state[k] = v.contiguous()
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": to_dict(self.model.config),
            "backbone_model_cfg": self.model.backbone_cfg,
            "backbone_reference": ref,
            "weights_dtype": "float16"
            if fp16
            else str(next(iter(state.values())).dtype).replace("torch.", ""),
        }
        with atomic_path(path / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT})
        with atomic_path(path / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
        return path

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> PreferenceScorer:
        self.model.to(device=device, dtype=dtype)
        return self

    @property
    def dimensions(self) -> list[str]:
        return self.model.dimensions

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.logit_scale.dtype

    # ----- scoring ----------------------------------------------------------------------------------

    def _dimensions(self, dimensions: str | Sequence[str] | None, user: Any) -> list[str]:
        if dimensions is None:  # everything this scorer has; personal only when a user is given
            return [d for d in self.dimensions if d != PERSONAL or user is not None]
        if isinstance(dimensions, str):
            dimensions = [d.strip() for d in dimensions.split(",") if d.strip()]
        dims = check_dimensions(list(dimensions), self.dimensions)
        if PERSONAL in dims and user is None:
            raise PixprefError(
                "the 'personal' dimension needs a user embedding (user=tensor or USER.safetensors path)"
            )
        return dims

    def _pixels(self, items: Sequence[Any], start: int, stop: int) -> torch.Tensor:
        """Images [start, stop) -> model pixels (n, 3, S, S)."""
        if isinstance(items, torch.Tensor):  # a batch tensor (N, 3, H, W): preprocess the chunk at once
            if items.shape[1] != 3:
                raise PixprefError(f"image tensors must have shape (N, 3, H, W), got {tuple(items.shape)}")
            chunk = items[start:stop].to(self.device)
            if chunk.dtype == torch.uint8:
                return self.model.preprocess(chunk.float() / 255.0)
            return self.model.preprocess(
                torch.stack([_to_chw(im, f"image {start + i}") for i, im in enumerate(chunk)])
            )
        return torch.cat(
            [self.model.preprocess(_to_chw(items[i], f"image {i}")[None]) for i in range(start, stop)]
        )

    @torch.no_grad()
    def score(
        self,
        images: ImageInput,
        prompts: str | Sequence[str],
        dimensions: str | Sequence[str] | None = None,
        user: str | Path | torch.Tensor | None = None,
        batch_size: int = 32,
        progress: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Score images against their prompts -> {dimension: float32 CPU tensor (N,)}.

        images: list of PIL images / file paths / (H, W, 3) arrays / (3, H, W) tensors, a uint8 array
        (N, H, W, 3) or a tensor (N, 3, H, W) (uint8, or float in [0, 1]); any device and dtype.
        prompts: one prompt for all images or one per image. dimensions: names (or "a,b"); default all
        text dimensions, plus ``personal`` when ``user`` is given. user: (T, D), (N, T, D) or a
        USER.safetensors path (key "user_embedding"); needed only for ``personal``.
        """
        # 1. check inputs
        n = _image_count(images)
        items = _as_list(images)
        prompts = _prompt_list(prompts, n)
        dims = self._dimensions(dimensions, user)
        if batch_size < 1:
            raise PixprefError(f"batch_size must be >= 1, got {batch_size}")
        users = None
        if PERSONAL in dims:
            users = user_batch(user, n, self.model.config.user_dim)
        # 2. score in batches
        from tqdm.auto import tqdm

        out: dict[str, list[torch.Tensor]] = {d: [] for d in dims}
        starts = range(0, n, batch_size)
        for start in tqdm(starts, desc="scoring", unit="batch", disable=not progress or n <= batch_size):
            stop = min(start + batch_size, n)
            pixels = self._pixels(items, start, stop)  # (b, 3, S, S)
            ids = self.model.tokenize(prompts[start:stop])  # (b, L)
            u = None if users is None else users[start:stop].to(self.device)
            scores = self.model(pixels, ids, dims, u)
            for d in dims:
                out[d].append(scores[d].float().cpu())
        return {d: torch.cat(v) for d, v in out.items()}

    def compare(
        self,
        images_a: ImageInput,
        images_b: ImageInput,
        prompts: str | Sequence[str],
        dimensions: str | Sequence[str] | None = None,
        user: str | Path | torch.Tensor | None = None,
        batch_size: int = 32,
        progress: bool = True,
    ) -> dict[str, WinRate]:
        """Per-dimension win rate of ``images_a`` over ``images_b`` (pairs by index; ties count half)."""
        n_a, n_b = _image_count(images_a), _image_count(images_b)
        if n_a != n_b:
            raise PixprefError(f"compare needs as many images in a as in b, got {n_a} and {n_b}")
        scores_a = self.score(images_a, prompts, dimensions, user, batch_size, progress)
        scores_b = self.score(images_b, prompts, dimensions, user, batch_size, progress)
        result = {}
        for d, a in scores_a.items():
            b = scores_b[d]
            wins, ties = int((a > b).sum()), int((a == b).sum())
            k = wins + 0.5 * ties
            low, high = wilson_interval(k, n_a)
            result[d] = WinRate(k / n_a, low, high, wins, ties, n_a - wins - ties, n_a)
        return result
