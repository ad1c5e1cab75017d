"""CLIP backbones through open_clip: the toy CLIP and real checkpoints (ViT-H-14, HPS v2, ...).

Architectures are open_clip JSON configs (``pixpref/models/configs/*.json`` are registered next to
open_clip's own); weights are resolved separately and only ever read as tensors:

    model, preprocess, tokenizer = load_clip("toy")                         # shipped toy CLIP
    model, preprocess, tokenizer = load_clip("ViT-H-14", weights="hps.pt")  # config name + state dict
    model, preprocess, tokenizer = load_clip("/path/to/folder")             # open_clip_config.json + weights

Weights files are safetensors or ``torch.load(weights_only=True)`` state dicts (optionally wrapped in
``{"state_dict": ...}`` with ``module.`` prefixes, as HPS v2 saves them). A pickled whole model is refused.
:func:`encode_image_tokens` / :func:`encode_text_tokens` expose the per-token outputs of both towers for
scorers built on top.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pixpref.errors import PixprefError, unknown_name

if TYPE_CHECKING:
    import torch

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TOY_CLIP_DIR = Path(__file__).resolve().parent.parent / "pretrained" / "toy" / "clip"
TOY_CLIP_CONFIG = "pixpref-toy-clip"
FOLDER_CONFIG = "open_clip_config.json"  # {"model_name": ..., "model_cfg": {...}}
FOLDER_WEIGHTS = "model.safetensors"
CLIP_NAMES = {"toy": TOY_CLIP_DIR}

_registered = False


def register_configs() -> None:
    """Add pixpref's JSON model configs to open_clip's registry (once)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def clip_config_names() -> list[str]:
    import open_clip

    register_configs()
    return open_clip.list_models()


# ---- weights -------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a plain torch checkpoint, never unpickling objects.

    Accepts ``{"state_dict": sd}`` / ``{"model": sd}`` wrappers and strips ``module.`` prefixes.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise PixprefError(f"CLIP weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise PixprefError(
                f"refusing to load {path}: it is not a plain state dict of tensors (it pickles other "
                "objects, e.g. a whole model, which could run arbitrary code when loaded). Save "
                "`model.state_dict()` with torch.save or safetensors instead. Detail: "
                f"{str(e).splitlines()[0]}"
            ) from None
        except (RuntimeError, EOFError, OSError) as e:
            raise PixprefError(f"could not read CLIP weights {path}: {str(e).splitlines()[0]}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PixprefError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _load_weights(model: Any, path: str | Path) -> None:
    sd = read_state_dict(path)
    own = model.state_dict()
    if "logit_scale" in sd and sd["logit_scale"].ndim != own["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(own["logit_scale"].shape)
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad_shape = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        raise PixprefError(
            f"weights {path} do not match the CLIP architecture: missing [{show(missing)}], "
            f"unexpected [{show(unexpected)}], wrong shape [{show(bad_shape)}]"
        )
    model.load_state_dict(sd, strict=True)


# ---- building and loading ------------------------------------------------------------------------------


def create_clip(name: str, device: str | torch.device = "cpu") -> tuple[Any, Any, Any]:
    """Randomly initialised open_clip model from a registered config name -> (model, preprocess, tokenizer)."""
    import open_clip

    names = clip_config_names()
    if name not in names:
        raise unknown_name("CLIP config", name, names)
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns "no pretrained weights" on every random init
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device=device)
    finally:
        logging.disable(previous)
    tokenizer = open_clip.get_tokenizer(name)
    return model, preprocess, tokenizer


def save_clip(model: Any, config_name: str, out_dir: str | Path, fp16: bool = True) -> Path:
    """Write ``open_clip_config.json`` (architecture) and ``model.safetensors`` (fp16 by default)."""
    import open_clip
    from safetensors.torch import save_file

    register_configs()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = open_clip.get_model_config(config_name)
    if cfg is None:
        raise unknown_name("CLIP config", config_name, clip_config_names())
    (out_dir / FOLDER_CONFIG).write_text(json.dumps({"model_name": config_name, "model_cfg": cfg}, indent=2))
    sd = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous().cpu()
          for k, v in model.state_dict().items()}
    save_file(sd, str(out_dir / FOLDER_WEIGHTS))
    return out_dir


def _from_folder(folder: Path, device: Any) -> tuple[Any, Any, Any]:
    import open_clip

    meta = json.loads((folder / FOLDER_CONFIG).read_text())
    name = meta.get("model_name")
    if not isinstance(name, str) or not isinstance(meta.get("model_cfg"), dict):
        raise PixprefError(f"{folder / FOLDER_CONFIG} must hold 'model_name' and 'model_cfg'")
    register_configs()
    if open_clip.get_model_config(name) != meta["model_cfg"]:
        # a config not in the registry (or changed): register the folder's own copy under its name
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="pixpref_clip_cfg_"))
        (tmp / f"{name}.json").write_text(json.dumps(meta["model_cfg"]))
        open_clip.add_model_config(tmp)
    model, preprocess, tokenizer = create_clip(name, device="cpu")
    weights = folder / FOLDER_WEIGHTS
    if not weights.is_file():
        raise PixprefError(f"CLIP folder {folder} has no {FOLDER_WEIGHTS}")
    _load_weights(model, weights)
    return model, preprocess, tokenizer


def load_clip(
    name_or_path: str | Path = "toy",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    weights: str | Path | None = None,
) -> tuple[Any, Any, Any]:
    """Load a CLIP model -> ``(model, preprocess, tokenizer)``, the model in eval mode.

    ``name_or_path``: ``"toy"`` (shipped), a folder with ``open_clip_config.json`` + ``model.safetensors``,
    or an open_clip config name (``"ViT-H-14"``, ``"pixpref-toy-clip"``, ...) together with ``weights``, a
    local safetensors / state-dict file. Nothing is downloaded.
    """
    import torch

    key = str(name_or_path)
    if key in CLIP_NAMES:
        folder = CLIP_NAMES[key]
        if not (folder / FOLDER_CONFIG).is_file():
            raise PixprefError(f"the shipped {key!r} CLIP is missing at {folder}; rebuild it with "
                               "`pixpref pretrain toy --only clip` or reinstall pixpref")
        model, preprocess, tokenizer = _from_folder(folder, device)
    elif Path(key).expanduser().is_dir():
        folder = Path(key).expanduser()
        if not (folder / FOLDER_CONFIG).is_file():
            raise PixprefError(f"CLIP folder {folder} has no {FOLDER_CONFIG}")
        model, preprocess, tokenizer = _from_folder(folder, device)
    elif key in clip_config_names():
        if weights is None:
            raise PixprefError(
                f"CLIP config {key!r} needs a local weights file (weights=...): pixpref downloads nothing"
            )
        model, preprocess, tokenizer = create_clip(key, device="cpu")
        _load_weights(model, weights)
    else:
        valid = sorted(CLIP_NAMES) + ["<folder>", "<open_clip config name> + weights"]
        raise unknown_name("CLIP model", key, valid)
    model.to(device=device, dtype=dtype or torch.float32).eval()
    return model, preprocess, tokenizer


@dataclass
class CLIPConfig:
    """Which CLIP to load and how (configs/clip/*.yaml)."""

    name_or_path: str = "toy"  # "toy", a CLIP folder, or an open_clip config name (then weights is needed)
    weights: str | None = None  # local safetensors / state-dict file (e.g. an HPS v2 checkpoint)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"


def load_clip_from_config(cfg: CLIPConfig) -> tuple[Any, Any, Any]:
    """``load_clip`` with the settings of a :class:`CLIPConfig`."""
    import torch

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[cfg.dtype]
    return load_clip(cfg.name_or_path, device=cfg.device, dtype=dtype, weights=cfg.weights)


# ---- token outputs -------------------------------------------------------------------------------------


def encode_image_tokens(model: Any, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, 3, H, W)`` (preprocessed) -> (pooled ``(B, D)`` projected embedding, unnormalised;
    patch tokens ``(B, N, W_v)`` after the final layer norm, before projection)."""
    visual = model.visual
    previous = visual.output_tokens
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = previous
    return pooled, tokens


def encode_text_tokens(model: Any, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``(B, T)`` -> (pooled ``(B, D)`` projected embedding, unnormalised; per-token states
    ``(B, T, W_t)`` after the final layer norm, before projection)."""
    if hasattr(model, "text"):  # CustomTextCLIP: the tower has its own output_tokens switch
        tower = model.text
        previous = tower.output_tokens
        tower.output_tokens = True
        try:
            pooled, tokens = tower(text)
        finally:
            tower.output_tokens = previous
        return pooled, tokens
    from open_clip.transformer import text_global_pool

    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast) + model.positional_embedding.to(cast)  # (B, T, W)
    x = model.transformer(x, attn_mask=model.attn_mask)
    tokens = model.ln_final(x)  # (B, T, W)
    pooled = text_global_pool(tokens, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        pooled = model.text_projection(pooled) if hasattr(model.text_projection, "weight") else pooled @ model.text_projection
    return pooled, tokens
