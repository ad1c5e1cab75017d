"""The multi-dimensional preference scorer: an open_clip backbone plus a condition-masked cross-attention head.

In the spirit of MPS (Zhang et al., CVPR 2024):

1. the CLIP towers give image tokens ``(B, 1+P, D)`` (pooled embedding first, then the patch tokens) and
   prompt tokens ``(B, L, D)``, all projected into the shared embedding width ``D``;
2. each dimension has condition tokens: the CLIP tokens of its condition text (``conditions.py``), or, for
   ``personal``, the user-embedding tokens ``(B, T_u, D_user)`` through a LayerNorm + linear projection;
3. the cosine similarity of every prompt token to its closest condition token, divided by the largest such
   value in the prompt, gives a relevance in ``(-inf, 1]``; prompt tokens below ``mask_threshold`` are hidden
   (``hard``) or down-weighted (``soft``); the prompt EOS token is always kept;
4. a small stack of cross-attention blocks lets the image tokens attend to the kept prompt tokens (plus the
   condition tokens when ``condition_in_context``; always for ``personal``);
5. score = exp(logit_scale) * cos(first output token, pooled prompt embedding); with
   ``utility_dimensions`` a dimension's score adds a Bradley-Terry utility term w . phi(image) / sqrt(D), w a
   linear map of its mean condition token (user token for ``personal``), phi an MLP of the pooled image embedding.

With ``zero_init`` the residual branches of the head start at zero, so an untrained scorer gives exactly
the CLIP score for every dimension; training makes the dimensions diverge.

Differences from MPS, on purpose: relevance is normalised per sample (MPS divides by the batch maximum, so
a score depended on its batch), the EOS token is never masked (an all-masked prompt would give NaN), and the
condition tokens may join the attention context (with short prompts the masks alone rarely differ).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pixpref.errors import PixprefError, unknown_name
from pixpref.scorer.conditions import (
    ALL_DIMENSIONS,
    CONDITION_WORDS,
    PERSONAL,
    TEXT_DIMENSIONS,
    check_dimensions,
    condition_text,
)

DEFAULT_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip OPENAI_DATASET_MEAN
DEFAULT_STD = (0.26862954, 0.26130258, 0.27577711)  # open_clip OPENAI_DATASET_STD
MAX_LOGIT_SCALE = 100.0


@dataclass
class ScorerConfig:
    """Architecture of a preference scorer (saved as ``scorer_config.json`` next to the weights)."""

    #: "toy" (the shipped toy CLIP), a CLIP folder (open_clip_config.json + model.safetensors), an open_clip
    #: config name ("ViT-H-14", "pixpref-toy-clip") or a path to an open_clip model-config JSON
    backbone: str = "ViT-H-14"
    #: backbone weights to start from (safetensors or a tensors-only torch file); default: the folder's own
    backbone_weights: str | None = None
    #: dimensions this scorer has (subset of aesthetics, alignment, detail, overall, personal)
    dimensions: list[str] = field(default_factory=lambda: list(ALL_DIMENSIONS))
    #: optional replacement condition words per text dimension
    conditions: dict[str, list[str]] = field(default_factory=dict)
    #: width D_user of the user-embedding tokens (> 0 when ``personal`` is a dimension); the default is the
    #: hidden size of PPD's VLM (LLaVA-OneVision Qwen2-7B)
    user_dim: int = 3584
    #: number of cross-attention blocks in the head
    cross_layers: int = 4
    #: attention heads per block (must divide the CLIP embedding width)
    cross_heads: int = 16
    #: hidden width of the head's MLPs, as a multiple of the embedding width
    mlp_ratio: float = 4.0
    #: "hard": hide prompt tokens below the threshold (MPS); "soft": add log-sigmoid((rel - thr) / temperature)
    mask_mode: Literal["hard", "soft"] = "hard"
    #: relevance threshold in [0, 1] (relevance = similarity / the prompt's largest similarity)
    mask_threshold: float = 0.3
    #: temperature of the soft mask
    mask_temperature: float = 0.05
    #: let the image tokens attend to the condition tokens as well as the kept prompt tokens
    condition_in_context: bool = True
    #: start the head's residual branches at zero (untrained scorer == CLIP score)
    zero_init: bool = True
    #: keep the CLIP backbone frozen (except the last ``unfreeze_last_blocks`` blocks of each tower)
    freeze_backbone: bool = True
    #: with a frozen backbone, train the last N transformer blocks of each tower (and their final norms and
    #: projections)
    unfreeze_last_blocks: int = 0
    #: dimensions whose score adds a Bradley-Terry utility term w . phi(image) / sqrt(D): phi an MLP of the
    #: pooled image embedding (shared), w a linear map of the condition's mean token (the projected user
    #: tokens for ``personal``), i.e. a per-condition / per-user linear taste over learned image features
    utility_dimensions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dimensions = check_dimensions(self.dimensions, ALL_DIMENSIONS)
        for name in self.utility_dimensions:
            if name not in self.dimensions:
                raise unknown_name("utility dimension", name, self.dimensions)
        for name, words in self.conditions.items():
            if name not in TEXT_DIMENSIONS:
                raise unknown_name("condition dimension", name, TEXT_DIMENSIONS)
            if (
                not isinstance(words, (list, tuple))
                or not words
                or not all(isinstance(w, str) for w in words)
            ):
                raise PixprefError(f"conditions.{name} must be a non-empty list of words, got {words!r}")
        if PERSONAL in self.dimensions and self.user_dim <= 0:
            raise PixprefError(
                "the 'personal' dimension needs user_dim > 0 (the width of the user-embedding tokens)"
            )
        if self.user_dim < 0:
            raise PixprefError(f"user_dim must be >= 0, got {self.user_dim}")
        if self.cross_layers < 1:
            raise PixprefError(f"cross_layers must be >= 1, got {self.cross_layers}")
        if self.cross_heads < 1:
            raise PixprefError(f"cross_heads must be >= 1, got {self.cross_heads}")
        if self.mlp_ratio <= 0:
            raise PixprefError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.mask_threshold <= 1.0:
            raise PixprefError(f"mask_threshold must be in [0, 1], got {self.mask_threshold}")
        if self.mask_temperature <= 0:
            raise PixprefError(f"mask_temperature must be > 0, got {self.mask_temperature}")
        if self.unfreeze_last_blocks < 0:
            raise PixprefError(f"unfreeze_last_blocks must be >= 0, got {self.unfreeze_last_blocks}")
        if not self.freeze_backbone and self.unfreeze_last_blocks:
            raise PixprefError("unfreeze_last_blocks only applies with freeze_backbone: true")

    def condition_words(self, dimension: str) -> list[str]:
        """The condition words of a text dimension (the override if any, else the default list)."""
        return list(self.conditions.get(dimension, CONDITION_WORDS[dimension]))


# ---------------------------------------------------------------------------------------------------------
# backbone


def resolve_backbone(name: str) -> tuple[dict[str, Any], Path | None]:
    """Backbone name or path -> (open_clip model config dict, weights file found with it or None).

    ``"toy"``: the shipped toy CLIP folder; a folder: ``open_clip_config.json`` (+ ``model.safetensors``);
    a ``.json`` file: an open_clip model config; otherwise a config name known to open_clip or to
    ``pixpref/models/configs`` ("ViT-H-14", "pixpref-toy-clip").
    """
    from pixpref.models import clip as clip_lib

    folder = clip_lib.CLIP_NAMES.get(name)
    path = Path(name).expanduser()
    if folder is None and path.is_dir():
        folder = path
    if folder is not None:
        cfg_file = folder / clip_lib.FOLDER_CONFIG
        if not cfg_file.is_file():
            raise PixprefError(f"CLIP folder {folder} has no {clip_lib.FOLDER_CONFIG}")
        data = json.loads(cfg_file.read_text())
        if not isinstance(data.get("model_cfg"), dict):
            raise PixprefError(f"{cfg_file} has no 'model_cfg' entry")
        weights = folder / clip_lib.FOLDER_WEIGHTS
        return data["model_cfg"], weights if weights.is_file() else None
    if path.suffix == ".json":
        if not path.is_file():
            raise PixprefError(f"backbone config file not found: {path}")
        data = json.loads(path.read_text())
        return data.get("model_cfg", data), None
    import open_clip

    clip_lib.register_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        valid = [*clip_lib.CLIP_NAMES, "<open_clip config name>", "<CLIP folder>", "<model config .json>"]
        raise unknown_name("CLIP backbone", name, valid)
    return cfg, None


def build_backbone(model_cfg: dict[str, Any], weights: str | Path | None = None) -> tuple[nn.Module, Any]:
    """Build an open_clip ``CLIP`` (ViT image tower, standard text tower) and its tokenizer from a config dict.

    ``weights``: optional state-dict file (safetensors, or a tensors-only torch file). -> ``(clip, tokenizer)``.
    """
    import open_clip
    from open_clip.transformer import VisionTransformer

    cfg = copy.deepcopy(model_cfg)
    cfg.pop("preprocess_cfg", None)
    if cfg.pop("custom_text", False) or "multimodal_cfg" in cfg or "hf_model_name" in cfg.get("text_cfg", {}):
        raise PixprefError("the scorer supports open_clip CLIP models with the standard text tower only")
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        raise PixprefError("the scorer supports open_clip ViT image towers only (not timm towers)")
    clip = open_clip.model.CLIP(**cfg)
    if not isinstance(clip.visual, VisionTransformer):
        raise PixprefError("the scorer supports open_clip ViT image towers only")
    if weights is not None:
        from pixpref.models.clip import read_state_dict

        state = read_state_dict(weights)
        if "logit_scale" in state:
            state["logit_scale"] = state["logit_scale"].reshape(clip.logit_scale.shape)
        own = clip.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        bad_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or bad_shape:
            raise PixprefError(
                f"backbone weights {weights} do not match the backbone config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, wrong shape {bad_shape[:5]}"
            )
        clip.load_state_dict(state)
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg["text_cfg"].get("context_length", 77))
    return clip, tokenizer


# ---------------------------------------------------------------------------------------------------------
# head


class CrossAttentionBlock(nn.Module):
    """Pre-norm block: queries (image tokens) attend to a context (prompt/condition tokens), then an MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, zero_init: bool) -> None:
        super().__init__()
        if width % heads:
            raise PixprefError(f"cross_heads ({heads}) must divide the CLIP embedding width ({width})")
        self.heads = heads
        self.ln_q = nn.LayerNorm(width)
        self.ln_kv = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, width)
        self.to_k = nn.Linear(width, width)
        self.to_v = nn.Linear(width, width)
        self.to_out = nn.Linear(width, width)
        hidden = max(1, int(round(width * mlp_ratio)))
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        if zero_init:  # residual branches start at zero: the block is the identity at init
            for lin in (self.to_out, self.mlp[-1]):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (B, N, D), context (B, M, D), bias (B, M) additive attention bias -> (B, N, D)."""
        b, n, d = x.shape
        m = context.shape[1]
        h = self.heads
        q = self.to_q(self.ln_q(x)).view(b, n, h, d // h).transpose(1, 2)  # (B, H, N, d_h)
        kv = self.ln_kv(context)
        k = self.to_k(kv).view(b, m, h, d // h).transpose(1, 2)  # (B, H, M, d_h)
        v = self.to_v(kv).view(b, m, h, d // h).transpose(1, 2)  # (B, H, M, d_h)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None, None, :].to(q.dtype))
        x = x + self.to_out(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.ln_mlp(x))


def relevance(
    prompt: torch.Tensor, prompt_valid: torch.Tensor, cond: torch.Tensor, cond_valid: torch.Tensor
) -> torch.Tensor:
    """Relevance of each prompt token to a condition.

    prompt (B, L, D), prompt_valid (B, L) bool, cond (B, C, D), cond_valid (B, C) bool -> (B, L): the cosine
    similarity to the closest valid condition token, divided by the largest value over the prompt's valid
    tokens (so the most relevant token has 1); invalid prompt tokens get -inf.
    """
    sim = torch.einsum("bld,bcd->blc", F.normalize(prompt, dim=-1), F.normalize(cond, dim=-1))  # (B, L, C)
    sim = sim.masked_fill(~cond_valid[:, None, :], float("-inf"))
    rel = sim.amax(dim=-1).masked_fill(~prompt_valid, float("-inf"))  # (B, L)
    top = rel.amax(dim=-1, keepdim=True).clamp_min(1e-6)  # (B, 1)
    return rel / top


class ScorerModel(nn.Module):
    """CLIP backbone + condition-masked cross-attention head; ``forward`` returns a score per dimension."""

    def __init__(
        self, config: ScorerConfig, clip: nn.Module, tokenizer: Any, backbone_cfg: dict[str, Any]
    ) -> None:
        super().__init__()
        self.config = config
        self.clip = clip
        self.tokenizer = tokenizer
        self.backbone_cfg = copy.deepcopy(backbone_cfg)
        pre = backbone_cfg.get("preprocess_cfg", {})
        self.image_mean = tuple(pre.get("mean", DEFAULT_MEAN))
        self.image_std = tuple(pre.get("std", DEFAULT_STD))
        size = clip.visual.image_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)

        proj = clip.text_projection
        width = proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]
        self.width = width
        self.logit_scale = nn.Parameter(clip.logit_scale.detach().clone().float().reshape(()))
        self.cross = nn.ModuleList(
            CrossAttentionBlock(width, config.cross_heads, config.mlp_ratio, config.zero_init)
            for _ in range(config.cross_layers)
        )
        if PERSONAL in config.dimensions:
            self.user_norm = nn.LayerNorm(config.user_dim)
            self.user_proj = nn.Linear(config.user_dim, width)
        if config.utility_dimensions:
            self.image_features = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(),
                                                nn.Linear(width, width))  # image embedding -> phi
            if config.zero_init:  # the utility terms start at zero
                nn.init.zeros_(self.image_features[-1].weight)
                nn.init.zeros_(self.image_features[-1].bias)
            if PERSONAL in config.utility_dimensions:
                self.user_taste = nn.Linear(width, width)  # mean projected user token -> w_u
            if set(config.utility_dimensions) - {PERSONAL}:
                self.condition_taste = nn.Linear(width, width)  # mean condition-word token -> w_d

        # condition texts -> token ids (not saved: rebuilt from the config)
        self._separator_ids = set(tokenizer(",")[0].tolist()) - {
            0,
            tokenizer.sot_token_id,
            tokenizer.eot_token_id,
        }
        for dim in config.dimensions:
            if dim != PERSONAL:
                ids = self._condition_ids(config.condition_words(dim))  # (1, L)
                self.register_buffer(f"cond_ids_{dim}", ids, persistent=False)
        self._set_trainable()

    def _condition_ids(self, words: list[str]) -> torch.Tensor:
        """Token ids (1, L) of a condition: "w1, w2, ..."; "w1 w2 ..." when the commas do not fit the context."""
        room = self.tokenizer.context_length - 2  # SOT and EOS
        for sep in (", ", " "):
            text = condition_text(words, sep)
            if len(self.tokenizer.encode(text)) <= room:
                return self.tokenizer(text)
        raise PixprefError(
            f"condition words {words} do not fit the text context of {self.tokenizer.context_length} tokens; "
            "use fewer condition words"
        )

    # ----- construction -----------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: ScorerConfig) -> ScorerModel:
        """Build a scorer for training: backbone from ``config.backbone`` (+ weights), fresh head."""
        backbone_cfg, found_weights = resolve_backbone(config.backbone)
        clip, tokenizer = build_backbone(backbone_cfg, config.backbone_weights or found_weights)
        return cls(config, clip, tokenizer, backbone_cfg)

    def _set_trainable(self) -> None:
        cfg = self.config
        for p in self.clip.parameters():
            p.requires_grad_(not cfg.freeze_backbone)
        self.clip.logit_scale.requires_grad_(False)  # unused: the scorer has its own logit_scale
        if cfg.freeze_backbone and cfg.unfreeze_last_blocks:
            n = cfg.unfreeze_last_blocks
            visual, text = self.clip.visual.transformer.resblocks, self.clip.transformer.resblocks
            if n > min(len(visual), len(text)):
                raise PixprefError(
                    f"unfreeze_last_blocks={n} but the backbone towers have {len(visual)} and {len(text)} blocks"
                )
            modules = [*visual[-n:], self.clip.visual.ln_post, *text[-n:], self.clip.ln_final]
            for mod in modules:
                mod.requires_grad_(True)
            for p in (self.clip.visual.proj, self.clip.text_projection):
                if p is not None:
                    p.requires_grad_(True)

    def backbone_trainable(self) -> bool:
        return any(p.requires_grad for p in self.clip.parameters())

    def train(self, mode: bool = True) -> ScorerModel:
        super().train(mode)
        if not self.backbone_trainable():
            self.clip.eval()
        return self

    @property
    def dimensions(self) -> list[str]:
        return list(self.config.dimensions)

    # ----- inputs ---------------------------------------------------------------------------------------

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> token ids (N, L) on the model's device."""
        return self.tokenizer(list(prompts)).to(self.logit_scale.device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float images (N, 3, H, W) in [0, 1] -> normalised pixels (N, 3, S, S) in the model's dtype.

        Resizes the shorter side to the model size (bicubic, antialiased) and centre-crops.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise PixprefError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
        x = images.to(device=self.logit_scale.device, dtype=torch.float32)
        th, tw = self.image_size
        h, w = x.shape[-2:]
        if (h, w) != (th, tw):
            scale = max(th / h, tw / w)
            nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(
                0, 1
            )
            top, left = (nh - th) // 2, (nw - tw) // 2
            x = x[:, :, top : top + th, left : left + tw]
        mean = torch.tensor(self.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.logit_scale.dtype)

    # ----- towers ---------------------------------------------------------------------------------------

    def encode_image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) -> image tokens (B, 1 + P, D): the pooled CLIP image embedding, then the patches."""
        from pixpref.models.clip import encode_image_tokens

        pooled, tokens = encode_image_tokens(self.clip, pixels)  # (B, D), (B, P, W_v)
        proj = self.clip.visual.proj
        if proj is not None:
            tokens = tokens @ proj  # (B, P, D)
        return torch.cat([pooled[:, None], tokens], dim=1)

    def _eos_index(self, ids: torch.Tensor) -> torch.Tensor:
        """Position of the pooled token of each prompt (B,), following the text tower's pool type."""
        pool = self.clip.text_pool_type
        if pool == "argmax":
            return ids.argmax(dim=-1)
        if pool == "eos":
            return (ids == self.clip.text_eos_id).int().argmax(dim=-1)
        if pool == "first":
            return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)

    def encode_text_tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids (B, L) -> (tokens (B, L, D), pooled (B, D) == clip.encode_text(ids), eos index (B,))."""
        from pixpref.models.clip import encode_text_tokens

        pooled, tokens = encode_text_tokens(self.clip, ids)  # (B, D), (B, L, W_t)
        proj = self.clip.text_projection
        if proj is not None:
            tokens = proj(tokens) if isinstance(proj, nn.Linear) else tokens @ proj  # (B, L, D)
        return tokens, pooled, self._eos_index(ids)

    def encode(self, pixels: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone features shared by all dimensions (no grad when the backbone is frozen)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.backbone_trainable()):
            image = self.encode_image_tokens(pixels)
            prompt, pooled, eos = self.encode_text_tokens(ids)
        pos = torch.arange(ids.shape[1], device=ids.device)[None]  # (1, L)
        valid = (pos >= 1) & (pos <= eos[:, None])  # content tokens + EOS, no SOT, no padding
        return {"image": image, "prompt": prompt, "pooled": pooled, "eos": eos, "valid": valid}

    # ----- conditions and head ------------------------------------------------------------------------

    def condition_tokens(
        self, dimension: str, batch: int, user: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition tokens (B, C, D) and their validity (B, C) for one dimension."""
        if dimension == PERSONAL:
            if user is None:
                raise PixprefError("the 'personal' dimension needs a user embedding (pass user=...)")
            if user.ndim != 3 or user.shape[0] != batch or user.shape[2] != self.config.user_dim:
                raise PixprefError(
                    f"user embedding must have shape ({batch}, T, {self.config.user_dim}), got {tuple(user.shape)}"
                )
            cond = self.user_proj(self.user_norm(user.to(self.logit_scale.dtype)))  # (B, T_u, D)
            return cond, torch.ones(cond.shape[:2], dtype=torch.bool, device=cond.device)
        ids = getattr(self, f"cond_ids_{dimension}")  # (1, Lc)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.backbone_trainable()):
            cond, _, eos = self.encode_text_tokens(ids)  # (1, Lc, D)
        pos = torch.arange(ids.shape[1], device=ids.device)[None]
        valid = (pos >= 1) & (pos < eos[:, None])  # condition words only: no SOT, EOS, padding
        for sep in self._separator_ids:
            valid &= ids != sep
        return cond.expand(batch, -1, -1), valid.expand(batch, -1)

    def prompt_bias(self, rel: torch.Tensor, valid: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        """Relevance (B, L) -> additive attention bias (B, L) over the prompt tokens."""
        cfg = self.config
        if cfg.mask_mode == "hard":
            bias = torch.where(rel > cfg.mask_threshold, 0.0, float("-inf"))
        else:
            bias = F.logsigmoid((rel - cfg.mask_threshold) / cfg.mask_temperature)
        bias = bias.masked_fill(~valid, float("-inf"))
        rows = torch.arange(rel.shape[0], device=rel.device)
        bias[rows, eos] = 0.0  # the EOS token is always kept, so no row is fully masked
        return bias

    def score_dimension(
        self, feats: dict[str, torch.Tensor], dimension: str, user: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Score (B,) for one dimension from the features of :meth:`encode`."""
        if dimension not in self.config.dimensions:
            raise unknown_name("dimension", dimension, self.config.dimensions)
        prompt, valid = feats["prompt"], feats["valid"]
        b = prompt.shape[0]
        cond, cond_valid = self.condition_tokens(dimension, b, user)
        rel = relevance(prompt, valid, cond, cond_valid)  # (B, L)
        bias = self.prompt_bias(rel, valid, feats["eos"])  # (B, L)
        context = prompt
        if self.config.condition_in_context or dimension == PERSONAL:
            context = torch.cat([prompt, cond], dim=1)  # (B, L + C, D)
            cond_bias = torch.zeros(cond_valid.shape, dtype=bias.dtype, device=bias.device)
            bias = torch.cat([bias, cond_bias.masked_fill(~cond_valid, float("-inf"))], dim=1)
        # The head has no self-attention: each image token is transformed on its own and only the first
        # (pooled) one is read, so the patch tokens are left out; the score is the same, the head ~P times cheaper.
        x = feats["image"][:, :1]  # (B, 1, D)
        for block in self.cross:
            x = block(x, context, bias)
        image = F.normalize(x[:, 0].float(), dim=-1)  # (B, D)
        text = F.normalize(feats["pooled"].float(), dim=-1)  # (B, D)
        scale = self.logit_scale.float().exp().clamp(max=MAX_LOGIT_SCALE)
        score = scale * (image * text).sum(dim=-1)
        if dimension in self.config.utility_dimensions:
            weights = cond_valid.to(cond.dtype)[..., None]  # (B, C, 1)
            pooled_cond = (cond * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, D)
            taste_layer = self.user_taste if dimension == PERSONAL else self.condition_taste
            taste = taste_layer(pooled_cond).float()  # (B, D): w
            if "phi" not in feats:  # phi(image) (B, D) is shared by every dimension: computed once per batch
                feats["phi"] = self.image_features(feats["image"][:, 0]).float()
            phi = feats["phi"]
            score = score + (taste * phi).sum(dim=-1) / self.width**0.5
        return score

    def forward(
        self,
        pixels: torch.Tensor,
        ids: torch.Tensor,
        dimensions: list[str] | None = None,
        user: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """pixels (B, 3, S, S), ids (B, L), user (B, T_u, D_user) or None -> {dimension: scores (B,)}."""
        dims = check_dimensions(dimensions or self.dimensions, self.config.dimensions)
        feats = self.encode(pixels, ids)
        return {dim: self.score_dimension(feats, dim, user) for dim in dims}


# ---------------------------------------------------------------------------------------------------------
# training helpers


def pairwise_loss(score_a: torch.Tensor, score_b: torch.Tensor, label: torch.Tensor | float) -> torch.Tensor:
    """Bradley-Terry loss: cross-entropy of P(a preferred) = sigmoid(score_a - score_b) against ``label``.

    score_a, score_b (B,); label (B,) or scalar, the probability that a is preferred: 1 (a won), 0 (b won),
    0.5 (tie). Returns the mean loss (a scalar).
    """
    if score_a.shape != score_b.shape:
        raise PixprefError(f"score shapes differ: {tuple(score_a.shape)} vs {tuple(score_b.shape)}")
    label = torch.as_tensor(label, dtype=score_a.dtype, device=score_a.device).expand_as(score_a)
    if bool(((label < 0) | (label > 1) | torch.isnan(label)).any()):
        raise PixprefError("pairwise labels must be in [0, 1] (1: a preferred, 0: b preferred, 0.5: tie)")
    return F.binary_cross_entropy_with_logits(score_a - score_b, label)


def pairwise_accuracy(score_a: torch.Tensor, score_b: torch.Tensor, label: torch.Tensor) -> float:
    """Share of decided pairs (label != 0.5) ranked as labelled; equal scores count half. nan if none."""
    label = torch.as_tensor(label, device=score_a.device)
    decided = label != 0.5
    if not bool(decided.any()):
        return float("nan")
    agree = torch.where(score_a == score_b, 0.5, ((score_a > score_b) == (label > 0.5)).float())
    return agree[decided].mean().item()
