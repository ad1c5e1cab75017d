"""Loading text-to-image pipelines: the shipped toy model and real SD 1.5 / SDXL folders, one code path.

    pipe = load_pipeline("toy")                 # shipped pixpref/pretrained/toy/base
    pipe = load_pipeline("sd15")                # configs/sd15/model.yaml -> its local `path`
    pipe = load_pipeline("/models/sdxl-base")   # any local diffusers pipeline folder

A folder is dispatched on the ``_class_name`` in its ``model_index.json`` and loaded with that class's
``from_pretrained(..., local_files_only=True)``: nothing is ever fetched from a hub.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pixpref.config import load_config
from pixpref.errors import PixprefError, unknown_name
from pixpref.io_utils import read_json

TOY_MODEL_DIR = Path(__file__).resolve().parents[1] / "pretrained" / "toy" / "base"
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

# model_index.json `_class_name` -> (module, class)
PIPELINE_CLASSES = {
    "PixprefPipeline": ("pixpref.models.pipeline", "PixprefPipeline"),
    "StableDiffusionPipeline": ("diffusers", "StableDiffusionPipeline"),
    "StableDiffusionXLPipeline": ("diffusers", "StableDiffusionXLPipeline"),
}
# registered model names with a config file configs/<name>/model.yaml (plus the built-in "toy")
REGISTERED_MODELS = ("sd15", "sdxl")
MODEL_NAMES = ("toy",) + REGISTERED_MODELS

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
}
DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class ModelConfig:
    """A registered base model (``configs/<name>/model.yaml``)."""

    name: str
    pipeline_class: Literal["PixprefPipeline", "StableDiffusionPipeline", "StableDiffusionXLPipeline"]
    path: str | None = None  # local diffusers folder (with model_index.json); fill this in
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    resolution: int = 512  # image side in pixels
    latent_channels: int = 4  # 3 for pixel-space models
    torch_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    default_steps: int = 25
    default_guidance_scale: float = 7.5
    description: str = ""


TOY_MODEL = ModelConfig(
    name="toy", pipeline_class="PixprefPipeline", path=str(TOY_MODEL_DIR), resolution=32, latent_channels=3,
    default_steps=25, default_guidance_scale=2.0, description="pixpref's shipped toy-world base model",
)


def model_config(name: str) -> ModelConfig:
    """The registry entry for ``name`` (``toy``, ``sd15``, ``sdxl``)."""
    if name == "toy":
        return TOY_MODEL
    if name not in REGISTERED_MODELS:
        raise unknown_name("model", name, MODEL_NAMES)
    return load_config(CONFIG_DIR / name / "model.yaml", ModelConfig)


def resolve_model(name_or_path: str | os.PathLike) -> tuple[Path, ModelConfig | None]:
    """Model name or folder -> (folder, registry entry or None)."""
    text = str(name_or_path)
    if text in MODEL_NAMES:
        cfg = model_config(text)
        if not cfg.path:
            raise PixprefError(
                f"model {text!r} has no local path: set `path:` in {CONFIG_DIR / text / 'model.yaml'} to a "
                f"downloaded {cfg.pipeline_class} folder (with model_index.json)"
            )
        return Path(cfg.path).expanduser(), cfg
    path = Path(text).expanduser()
    if path.is_dir():
        return path, None
    raise PixprefError(f"unknown model {text!r}; valid options: {', '.join(MODEL_NAMES)}, or a local pipeline folder")


def pipeline_class_name(folder: str | os.PathLike) -> str:
    """``_class_name`` of a diffusers pipeline folder."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise PixprefError(f"{folder} is not a diffusers pipeline folder: model_index.json not found")
    name = read_json(index).get("_class_name")
    if name not in PIPELINE_CLASSES:
        raise unknown_name(f"pipeline class in {index}:", name, PIPELINE_CLASSES)
    return name


def load_pipeline(name_or_path: str | os.PathLike = "toy", torch_dtype=None, device=None):
    """Load a text-to-image pipeline offline.

    Args:
        name_or_path: ``toy``, a registered name (``sd15``, ``sdxl``) or a local diffusers folder.
        torch_dtype: a ``torch.dtype`` or its name; default float32 (the registry's dtype for names).
        device: where to move the pipeline (default: stay on CPU).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import importlib

    import torch

    folder, cfg = resolve_model(name_or_path)
    class_name = pipeline_class_name(folder)
    if cfg is not None and cfg.pipeline_class != class_name:
        raise PixprefError(f"model {cfg.name!r} expects a {cfg.pipeline_class} folder but {folder} holds {class_name}")
    if torch_dtype is None:
        torch_dtype = cfg.torch_dtype if cfg is not None else "float32"
    if isinstance(torch_dtype, str):
        if torch_dtype not in DTYPES:
            raise unknown_name("dtype", torch_dtype, DTYPES)
        torch_dtype = getattr(torch, torch_dtype)
    module, attr = PIPELINE_CLASSES[class_name]
    cls = getattr(importlib.import_module(module), attr)
    pipe = cls.from_pretrained(folder, local_files_only=True, **{_dtype_kwarg(): torch_dtype})
    if device is not None:
        pipe.to(device)
    return pipe


def _dtype_kwarg() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (the old name warns); use what this version reads."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (newer diffusers)
    except ImportError:
        return "torch_dtype"
    return "dtype"


def default_settings(pipe, name_or_path: str | os.PathLike) -> tuple[int, float]:
    """(steps, guidance scale) defaults: the registry's for names, the toy's for Pixpref folders."""
    text = str(name_or_path)
    if text in MODEL_NAMES:
        cfg = model_config(text)
        return cfg.default_steps, cfg.default_guidance_scale
    if type(pipe).__name__ == "PixprefPipeline":
        return TOY_MODEL.default_steps, TOY_MODEL.default_guidance_scale
    return 25, 7.5


def set_scheduler(pipe, name: str):
    """Replace ``pipe.scheduler`` by scheduler ``name`` built from the same config; returns ``pipe``."""
    import diffusers

    if name not in SCHEDULERS:
        raise unknown_name("scheduler", name, SCHEDULERS)
    cls = getattr(diffusers, SCHEDULERS[name])
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    return pipe
