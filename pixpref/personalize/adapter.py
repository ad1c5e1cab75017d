"""User cross-attention adapter: decoupled cross-attention over user tokens (IP-Adapter style).

Every cross-attention layer (``attn2``) of a diffusers ``UNet2DConditionModel`` gets a second attention over
*user tokens*, added to the text attention before the shared output projection:

    Z' = softmax(Q K^T / sqrt(d)) V  +  scale * gate * softmax(Q K_u^T / sqrt(d)) V_u

with Q, K, V, ``to_out`` the frozen ones of the layer and K_u = to_k_user(u), V_u = to_v_user(u) new.
User tokens come from a VLM user embedding through :class:`UserTokenProjection`:
(B, T_in, D_vlm) -> (B, T_out, cross_attention_dim).

:class:`UserAdapter` owns only the new weights; the processors it installs borrow everything else from the
``Attention`` they serve, so ``unet.parameters()`` stays the frozen base model and
``adapter.parameters()`` is exactly what trains. "No user" is the base model bit for bit: ``user_tokens``
None, ``user_scale`` 0, or a sample masked out by ``user_mask`` adds nothing at all (the user branch is
skipped or replaced by exact zeros, never fed a zero embedding). Freshly built adapters are also a no-op
(``init="zero"``: zero value projection; ``init="copy"``: IP-Adapter style copy of the text key/value
projections behind a zero gate).

    adapter = UserAdapter(UserAdapterConfig(embed_dim=3584, num_tokens=29), unet)
    adapter.install(unet)
    tokens = adapter.encode(user_embedding)                      # (B, 29, 768)
    keep = drop_user_tokens(tokens, p=0.1, generator=g)          # training-time user dropout
    out = unet(x, t, encoder_hidden_states=text,
               cross_attention_kwargs=adapter.attention_kwargs(tokens, mask=keep)).sample

The adapter is a separate module from the UNet: move both (``adapter.to(device)``). For DDP, wrap
UNet and adapter in one module whose ``forward`` calls both, so gradients sync.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pixpref.config import from_dict
from pixpref.errors import PixprefError, unknown_name
from pixpref.io_utils import atomic_path, read_json
from pixpref.personalize.names import USER_GUIDANCE_MODES

WEIGHTS_NAME = "user_adapter.safetensors"
CONFIG_NAME = "adapter_config.json"
INIT_MODES = ("zero", "copy")
ATTENTION_BACKENDS = ("auto", "sdpa", "xformers")
# Keys the adapter reads from ``cross_attention_kwargs``; every processor it installs accepts them.
USER_KWARGS = ("user_tokens", "user_scale", "user_mask")


@dataclass
class UserAdapterConfig:
    """Shape and initialisation of a :class:`UserAdapter`.

    Attributes:
        embed_dim: width of the input user embedding (VLM hidden size, e.g. 3584 for Qwen2-7B).
        num_tokens: tokens per user embedding, T_in (e.g. 29 = embedding layer + 28 decoder layers).
        num_out_tokens: user tokens given to the UNet, T_out; None means T_in. When it differs, a learned
            linear map over the token axis mixes T_in -> T_out.
        cross_attention_dim: width of the user tokens; resolved from the UNet when None.
        layers: module path of every cross-attention layer -> [cross_attention_dim, inner_dim]; resolved
            from the UNet when empty and checked against it otherwise.
        init: "zero" (to_v_user = 0) or "copy" (to_k/to_v copied from the text projections, zero gate);
            both leave the UNet output unchanged until trained.
        pos_embed: add a learned per-token position embedding to the user tokens.
        scale: default weight of the user branch (overridden per call by ``user_scale``).
        start, end: default window of the denoising steps that use the user branch, as fractions
            (:meth:`UserAdapter.step_window`; overridden per call by ``user_start`` / ``user_end``). Saved
            with the adapter, so an adapter carries the window it was measured with.
    """

    embed_dim: int
    num_tokens: int
    num_out_tokens: int | None = None
    cross_attention_dim: int | None = None
    layers: dict[str, list[int]] = field(default_factory=dict)
    init: Literal["zero", "copy"] = "zero"
    pos_embed: bool = False
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        for name in ("embed_dim", "num_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise PixprefError(
                    f"UserAdapterConfig.{name} must be a positive integer, got {getattr(self, name)!r}"
                )
        for name in ("num_out_tokens", "cross_attention_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise PixprefError(
                    f"UserAdapterConfig.{name} must be a positive integer or null, got {value!r}"
                )
        if self.init not in INIT_MODES:
            raise unknown_name("adapter init", self.init, INIT_MODES)
        if not math.isfinite(float(self.scale)):
            raise PixprefError(f"UserAdapterConfig.scale must be finite, got {self.scale!r}")
        if not 0.0 <= self.start < self.end <= 1.0:
            raise PixprefError(
                f"UserAdapterConfig needs 0 <= start < end <= 1 (the user branch's step window), got "
                f"{self.start} and {self.end}"
            )
        for name, dims in self.layers.items():
            if not (
                isinstance(dims, (list, tuple)) and len(dims) == 2 and all(isinstance(d, int) for d in dims)
            ):
                raise PixprefError(
                    f"UserAdapterConfig.layers[{name!r}] must be [cross_attention_dim, inner_dim]"
                )
        self.layers = {k: list(v) for k, v in self.layers.items()}

    @property
    def out_tokens(self) -> int:
        """T_out, the number of user tokens the UNet sees."""
        return self.num_out_tokens if self.num_out_tokens is not None else self.num_tokens

    def resolve(self, unet: nn.Module) -> UserAdapterConfig:
        """Return a copy with ``layers`` and ``cross_attention_dim`` taken from ``unet``; check them if set."""
        found = {
            name: [attn.to_k.in_features, attn.to_k.out_features]
            for name, attn in cross_attention_layers(unet).items()
        }
        if not found:
            raise PixprefError("the UNet has no cross-attention layers to attach a user adapter to")
        widths = sorted({dims[0] for dims in found.values()})
        if len(widths) != 1:
            raise PixprefError(
                f"user adapter needs one cross_attention_dim for all layers; the UNet has {widths}"
            )
        width = widths[0]
        if self.cross_attention_dim is not None and self.cross_attention_dim != width:
            raise PixprefError(
                f"adapter cross_attention_dim {self.cross_attention_dim} does not match the UNet's {width}"
            )
        if self.layers:
            missing = sorted(set(self.layers) - set(found))
            extra = sorted(set(found) - set(self.layers))
            if missing or extra:
                raise PixprefError(
                    "adapter layers do not match the UNet's cross-attention layers: "
                    f"not in UNet: {missing[:3]}{'...' if len(missing) > 3 else ''}; "
                    f"not in adapter: {extra[:3]}{'...' if len(extra) > 3 else ''}"
                )
            for name, dims in found.items():
                if self.layers[name] != dims:
                    raise PixprefError(
                        f"adapter layer {name!r} has [cross_attention_dim, inner_dim] {self.layers[name]}, "
                        f"the UNet has {dims}"
                    )
        return dataclasses.replace(self, cross_attention_dim=width, layers=found)


def cross_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """Module path -> ``Attention`` for every cross-attention layer of ``unet`` (the ``attn2`` layers)."""
    from diffusers.models.attention_processor import Attention

    return {
        name: module
        for name, module in unet.named_modules()
        if isinstance(module, Attention) and module.is_cross_attention
    }


def drop_user_tokens(
    tokens: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample user dropout: a keep-mask (B,) bool with each sample dropped with probability ``p``.

    Pass it as ``user_mask``; a dropped sample gets exactly the base model (the user branch adds exact
    zeros), which is what "no user" means at sampling time. ``tokens`` (B, T, C) fixes batch and device.
    """
    if not 0.0 <= p <= 1.0:
        raise PixprefError(f"user dropout probability must be in [0, 1], got {p}")
    draw = torch.rand(
        tokens.shape[0], generator=generator, device=tokens.device if generator is None else generator.device
    )
    return (draw >= p).to(tokens.device)


class UserTokenProjection(nn.Module):
    """VLM user embedding (B, T_in, D_vlm) -> user tokens (B, T_out, C): [token mix] -> Linear -> [+pos] -> LN."""

    def __init__(
        self, embed_dim: int, num_tokens: int, out_tokens: int, cross_attention_dim: int, pos_embed: bool
    ):
        super().__init__()
        self.token_mix = nn.Linear(num_tokens, out_tokens) if out_tokens != num_tokens else None
        self.proj = nn.Linear(embed_dim, cross_attention_dim)
        self.pos = nn.Parameter(torch.randn(out_tokens, cross_attention_dim) * 0.02) if pos_embed else None
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        x = embedding.to(self.proj.weight.dtype)  # (B, T_in, D)
        if self.token_mix is not None:
            x = self.token_mix(x.transpose(1, 2)).transpose(1, 2)  # (B, T_out, D)
        x = self.proj(x)  # (B, T_out, C)
        if self.pos is not None:
            x = x + self.pos
        return self.norm(x)


class UserKV(nn.Module):
    """The new key/value projections of one cross-attention layer (plus a zero gate for ``init="copy"``)."""

    def __init__(self, cross_attention_dim: int, inner_dim: int, gated: bool):
        super().__init__()
        self.to_k_user = nn.Linear(cross_attention_dim, inner_dim, bias=False)
        self.to_v_user = nn.Linear(cross_attention_dim, inner_dim, bias=False)
        self.gate = nn.Parameter(torch.zeros(())) if gated else None


def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, xformers: bool
) -> torch.Tensor:
    """(B, heads, Tq, d) x (B, heads, Tk, d) -> (B, heads, Tq, d), by SDPA or xformers."""
    if xformers and mask is None:
        import xformers.ops

        out = xformers.ops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)


def _xformers_importable() -> bool:
    return importlib.util.find_spec("xformers") is not None


class UserAttnProcessor:
    """Cross-attention processor with a decoupled user branch; borrows the frozen parts of its ``Attention``.

    The text branch follows diffusers' ``AttnProcessor2_0`` step by step (so with no user it gives the
    same numbers); the user branch is skipped when ``user_tokens`` is None or the scale is 0.
    """

    def __init__(self, layer: UserKV, scale: float = 1.0, backend: str = "auto"):
        if backend not in ATTENTION_BACKENDS:
            raise unknown_name("attention backend", backend, ATTENTION_BACKENDS)
        if backend == "xformers" and not _xformers_importable():
            raise PixprefError(
                "attention backend 'xformers' needs the xformers package (pip install pixpref[gpu])"
            )
        self.layer = layer
        self.scale = float(scale)
        self.backend = backend

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        user_tokens: torch.Tensor | None = None,
        user_scale: float | None = None,
        user_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)  # (B, HW, C)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, seq_len, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)  # (B, Tq, inner)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, Tq, d)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, Tk, d)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        use_xformers = self.backend == "xformers" or (
            self.backend == "auto" and query.is_cuda and _xformers_importable()
        )
        out = _attention(query, key, value, attention_mask, use_xformers)  # (B, h, Tq, d)

        scale = self.scale if user_scale is None else float(user_scale)
        if user_tokens is not None and scale != 0.0:
            if user_tokens.ndim != 3 or user_tokens.shape[0] != batch:
                raise PixprefError(
                    f"user_tokens must have shape (B={batch}, T, C), got {tuple(user_tokens.shape)}"
                )
            tokens = user_tokens.to(self.layer.to_k_user.weight.dtype)
            key_u = self.layer.to_k_user(tokens).to(query.dtype)  # (B, Tu, inner)
            value_u = self.layer.to_v_user(tokens).to(query.dtype)
            key_u = key_u.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, Tu, d)
            value_u = value_u.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            out_u = _attention(query, key_u, value_u, None, use_xformers)  # (B, h, Tq, d)
            weight = scale if self.layer.gate is None else scale * self.layer.gate.to(out_u.dtype)
            out_u = out_u * weight
            if user_mask is not None:
                if user_mask.shape != (batch,):
                    raise PixprefError(f"user_mask must have shape ({batch},), got {tuple(user_mask.shape)}")
                keep = user_mask.to(device=out_u.device, dtype=torch.bool).view(batch, 1, 1, 1)
                out_u = torch.where(keep, out_u, torch.zeros_like(out_u))
            out = out + out_u.to(out.dtype)

        hidden_states = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)  # shared output projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class IgnoreUserKwargs:
    """Wraps a layer's own processor so it accepts (and ignores) the user kwargs without warnings."""

    def __init__(self, base: Any):
        self.base = base

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        user_tokens: torch.Tensor | None = None,
        user_scale: float | None = None,
        user_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        extra = {} if temb is None else {"temb": temb}
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, **extra)


class UserAdapter(nn.Module):
    """The trainable part of a user-conditioned UNet: token projection + per-layer user key/value projections.

    Build with the UNet it is for (``UserAdapter(config, unet)``) so layer shapes are resolved and, for
    ``init="copy"`` (and the key projection of ``init="zero"``), the text projections are copied.
    """

    def __init__(self, config: UserAdapterConfig, unet: nn.Module | None = None):
        super().__init__()
        if unet is not None:
            config = config.resolve(unet)
        if not config.layers or config.cross_attention_dim is None:
            raise PixprefError(
                "UserAdapter needs the UNet (or a config with resolved layers) to know its shapes"
            )
        self.config = config
        self.projection = UserTokenProjection(
            config.embed_dim,
            config.num_tokens,
            config.out_tokens,
            config.cross_attention_dim,
            config.pos_embed,
        )
        gated = config.init == "copy"
        self.layers = nn.ModuleDict(
            {_key(name): UserKV(dims[0], dims[1], gated) for name, dims in config.layers.items()}
        )
        # id(unet) -> (the UNet's original processors, the user processors installed on it)
        self._installed: dict[int, tuple[dict[str, Any], list[UserAttnProcessor]]] = {}
        self.reset_parameters(unet)

    @torch.no_grad()
    def reset_parameters(self, unet: nn.Module | None = None) -> None:
        """(Re)initialise so that the adapter is a no-op: zero values (``zero``) or a zero gate (``copy``)."""
        attns = cross_attention_layers(unet) if unet is not None else {}
        for name in self.config.layers:
            layer = self.layers[_key(name)]
            attn = attns.get(name)
            if attn is not None:
                layer.to_k_user.weight.copy_(attn.to_k.weight)
            if self.config.init == "copy":
                if attn is not None:
                    layer.to_v_user.weight.copy_(attn.to_v.weight)
                layer.gate.zero_()
            else:
                layer.to_v_user.weight.zero_()

    def layer(self, name: str) -> UserKV:
        """The user key/value projections of cross-attention layer ``name`` (module path in the UNet)."""
        return self.layers[_key(name)]

    def encode(self, user_embedding: torch.Tensor) -> torch.Tensor:
        """User embedding (B, T_in, D_vlm) -> user tokens (B, T_out, cross_attention_dim)."""
        cfg = self.config
        if user_embedding.ndim != 3 or tuple(user_embedding.shape[1:]) != (cfg.num_tokens, cfg.embed_dim):
            raise PixprefError(
                f"user embedding must have shape (B, {cfg.num_tokens}, {cfg.embed_dim}), "
                f"got {tuple(user_embedding.shape)}"
            )
        return self.projection(user_embedding)

    def attention_kwargs(
        self, user_tokens: torch.Tensor | None, scale: float | None = None, mask: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """The ``cross_attention_kwargs`` for one UNet call (tokens None: the base model)."""
        return {"user_tokens": user_tokens, "user_scale": scale, "user_mask": mask}

    def guided_kwargs(
        self, user_tokens: torch.Tensor, do_cfg: bool, scale: float | None = None, user_guidance: str = "text"
    ) -> dict[str, Any]:
        """``cross_attention_kwargs`` for a pipeline call: user tokens (B, T, C) for B images.

        Under classifier-free guidance the batch doubles ([unconditional; conditional]); ``user_guidance``
        (one of :data:`USER_GUIDANCE_MODES`) says whether the unconditional half sees the user.
        """
        if user_guidance not in USER_GUIDANCE_MODES:
            raise unknown_name("user guidance mode", user_guidance, USER_GUIDANCE_MODES)
        if not do_cfg:
            return self.attention_kwargs(user_tokens, scale=scale)
        n = user_tokens.shape[0]
        tokens = torch.cat([user_tokens, user_tokens])
        mask = None
        if user_guidance == "joint":
            mask = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
            mask = mask.to(user_tokens.device)
        return self.attention_kwargs(tokens, scale=scale, mask=mask)

    @staticmethod
    def step_window(kwargs: dict[str, Any], num_steps: int, start: float = 0.0,
                    end: float = 1.0) -> Callable[[Any, int, Any, dict], dict] | None:
        """Limit the user branch of a pipeline call to a window of its denoising steps.

        ``start`` / ``end`` are fractions of the ``num_steps`` steps (IP-Adapter front ends call them
        start_at / end_at): step i uses the user branch iff ``start * num_steps <= i < end * num_steps``.
        Early steps fix layout and shape, late ones style, so ``start > 0`` lets the base model place the
        prompt's object before the user steers it. ``kwargs`` (from :meth:`guided_kwargs`) is edited in place
        for the first step; the returned ``callback_on_step_end`` (None for the full window) sets the scale
        of each next step. Off-window steps have ``user_scale`` 0: exactly the base model.
        """
        if not (0.0 <= start < end <= 1.0):
            raise PixprefError(f"the user window needs 0 <= user_start < user_end <= 1, got {start} and {end}")
        if num_steps < 1:
            raise PixprefError(f"num_steps must be >= 1, got {num_steps}")
        if start == 0.0 and end == 1.0:
            return None
        scale = kwargs.get("user_scale")  # None: the processors' own scale

        def active(i: int) -> bool:
            return start * num_steps <= i < end * num_steps

        kwargs["user_scale"] = scale if active(0) else 0.0

        def callback(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            kwargs["user_scale"] = scale if active(step + 1) else 0.0
            return tensors

        return callback

    def set_scale(self, scale: float) -> None:
        """Set the default weight of the user branch in every installed processor (per-call kwargs win)."""
        if not math.isfinite(float(scale)):
            raise PixprefError(f"adapter scale must be finite, got {scale!r}")
        self.config.scale = float(scale)
        for _, user_procs in self._installed.values():
            for proc in user_procs:
                proc.scale = float(scale)

    def install(self, unet: nn.Module, backend: str = "auto") -> None:
        """Put user processors on ``unet``'s cross-attention layers and kwargs-tolerant ones on the rest."""
        self.config.resolve(unet)  # raises on a mismatched UNet
        if backend not in ATTENTION_BACKENDS:
            raise unknown_name("attention backend", backend, ATTENTION_BACKENDS)
        current = unet.attn_processors
        if any(isinstance(p, (UserAttnProcessor, IgnoreUserKwargs)) for p in current.values()):
            raise PixprefError("a user adapter is already installed on this UNet; call remove(unet) first")
        processors: dict[str, Any] = {}
        user_procs: list[UserAttnProcessor] = []
        for key, proc in current.items():
            name = key[: -len(".processor")]
            if name in self.config.layers:
                user_proc = UserAttnProcessor(self.layer(name), self.config.scale, backend)
                user_procs.append(user_proc)
                processors[key] = user_proc
            else:
                processors[key] = IgnoreUserKwargs(proc)
        unet.set_attn_processor(processors)
        self._installed[id(unet)] = (current, user_procs)

    def remove(self, unet: nn.Module) -> None:
        """Restore the processors ``unet`` had before :meth:`install`."""
        installed = self._installed.pop(id(unet), None)
        if installed is None:
            raise PixprefError("this user adapter is not installed on that UNet")
        unet.set_attn_processor(dict(installed[0]))

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write ``user_adapter.safetensors`` and ``adapter_config.json`` to ``directory``; return it."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous()
            for k, v in self.state_dict().items()
        }
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "pixpref": "user_adapter"})
        with atomic_path(directory / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, unet: nn.Module) -> UserAdapter:
        """Load an adapter saved by :meth:`save_pretrained`, checked against ``unet`` (not installed)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise PixprefError(f"user adapter file not found: {path}")
        adapter = cls(read_adapter_config(directory), unet)  # resolve() raises PixprefError on a mismatched UNet
        state = load_file(str(weights_path))
        own = adapter.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise PixprefError(
                f"{weights_path}: missing weights {missing[:3]}, unexpected weights {unexpected[:3]}"
            )
        for key, value in state.items():
            if value.shape != own[key].shape:
                raise PixprefError(
                    f"{weights_path}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}"
                )
        adapter.load_state_dict(state)
        return adapter


def _key(name: str) -> str:
    """Module path -> ModuleDict key (dots are not allowed in module names)."""
    return name.replace(".", "-")


def read_adapter_config(directory: str | Path) -> UserAdapterConfig:
    """The :class:`UserAdapterConfig` saved in ``directory/adapter_config.json`` (no weights loaded)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise PixprefError(f"user adapter file not found: {path}")
    return from_dict(UserAdapterConfig, read_json(path), prefix="adapter_config")
