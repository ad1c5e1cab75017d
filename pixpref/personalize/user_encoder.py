"""User encoder: a frozen vision-language model reads a user's few pairwise choices and its hidden
states become a fixed number of **user tokens** (PPD, stage 1).

For each pair the prompt holds the caption, the preferred image and the dispreferred image; then a request
to describe the user's preference. The embedding is taken from the hidden states:

    pooling="last_token_all_layers"   PPD's choice: the last token's hidden state at every layer
                                      (embedding layer + L layers) -> (L + 1, D) tokens
    pooling="last_token_last_layer"   the last token of the last layer -> (1, D)
    pooling="mean_last_layer"         mean over the prompt's tokens of the last layer -> (1, D)
    pooling="image_contrast_all_layers"
                                      per layer, the mean over pairs of (mean hidden state of the
                                      preferred image's tokens - that of the dispreferred image's)
                                      -> (L + 1, D): which way the user's choices point, per layer
    pooling="preference_head"         each pair read alone (as shown and swapped), then a trained
                                      preference head (``head``, pixpref.personalize.preference_head)
                                      turns the per-pair evidence into a posterior over taste
                                      prototypes -> (1, E): the population prior, not just the mean

With ``generate_tokens > 0`` the VLM first writes that many tokens greedily (PPD lets it write the
profile) and the last generated position is used; 0 uses the end of the prompt (cheaper).

    encoder = UserEncoder.from_pretrained("toy")
    emb = encoder.encode([pairs_of_user_a, pairs_of_user_b])   # (2, T, D)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from pixpref.errors import PixprefError, unknown_name
from pixpref.personalize.names import POOLINGS

PREAMBLE = "You will be shown a few examples of preferred and dispreferred images."
PAIR_TEMPLATE = "Prompt: {prompt}\nPreferred: {image}\nDispreferred: {image}\n"
REQUEST = "Describe what this user prefers in style, quality and aesthetics.\nUser Profile:"


@dataclass
class UserEncoderConfig:
    """How the VLM's hidden states become user tokens."""

    vlm: str = "toy"  # "toy" (shipped) or a local VLM folder
    pooling: Literal[
        "last_token_all_layers", "last_token_last_layer", "mean_last_layer", "image_contrast_all_layers",
        "preference_head",
    ] = "last_token_all_layers"
    head: str = "toy"  # pooling="preference_head": a shipped head name or a folder (ignored otherwise)
    generate_tokens: int = 0  # >0: write this many tokens greedily first (PPD), use the last one
    max_pairs: int = 8  # a prompt holds at most this many pairs
    batch_size: int = 8  # users per VLM forward
    chunk_pairs: int = 0  # >0: read a user's pairs in prompts of this many and average the chunks' embeddings

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise unknown_name("pooling", self.pooling, POOLINGS)
        if self.generate_tokens < 0:
            raise PixprefError(f"generate_tokens must be >= 0, got {self.generate_tokens}")
        if self.generate_tokens and self.pooling in ("image_contrast_all_layers", "preference_head"):
            raise PixprefError(f"pooling {self.pooling} reads the prompt's image tokens; set generate_tokens: 0")
        if self.max_pairs < 1:
            raise PixprefError(f"max_pairs must be >= 1, got {self.max_pairs}")
        if self.batch_size < 1:
            raise PixprefError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.chunk_pairs < 0:
            raise PixprefError(f"chunk_pairs must be >= 0 (0: all pairs in one prompt), got {self.chunk_pairs}")
        if self.chunk_pairs and self.pooling == "preference_head":
            raise PixprefError("chunk_pairs does not apply to pooling preference_head, which reads each pair alone; "
                               "set chunk_pairs: 0")


def config_from_spec(spec: dict[str, Any], **overrides: Any) -> UserEncoderConfig:
    """The encoder settings an adapter's user_encoder.json (or a saved embedding's metadata) records."""
    kwargs = {"vlm": str(spec.get("vlm", "toy")), "pooling": spec.get("pooling", "last_token_all_layers"),
              "generate_tokens": int(spec.get("generate_tokens", 0)), "head": str(spec.get("head", "toy")),
              "chunk_pairs": int(spec.get("chunk_pairs", 0))}
    return UserEncoderConfig(**(kwargs | overrides))


def _pair_fields(pair: Any) -> tuple[str, Any, Any]:
    """Accept (prompt, chosen, rejected) tuples or objects with .prompt/.chosen/.rejected."""
    if isinstance(pair, (tuple, list)) and len(pair) == 3:
        return pair[0], pair[1], pair[2]
    if all(hasattr(pair, a) for a in ("prompt", "chosen", "rejected")):
        return pair.prompt, pair.chosen, pair.rejected
    raise PixprefError(
        f"a user example must be (prompt, chosen_image, rejected_image) or have .prompt/.chosen/.rejected, "
        f"got {type(pair).__name__}"
    )


def _to_pil(image: Any, where: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise PixprefError(f"{where}: expected a uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}")
        return Image.fromarray(image)
    if isinstance(image, torch.Tensor):
        arr = image.detach().cpu()
        if arr.ndim != 3 or arr.shape[0] != 3:
            raise PixprefError(f"{where}: expected a (3, H, W) tensor in [0, 1], got shape {tuple(arr.shape)}")
        if not torch.isfinite(arr).all():
            raise PixprefError(f"{where}: image tensor has NaN or inf values")
        return Image.fromarray((arr.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    raise PixprefError(f"{where}: unsupported image type {type(image).__name__}; use PIL, numpy or torch")


def build_user_prompt(pairs: Sequence[Any], image_token: str) -> tuple[str, list[Image.Image]]:
    """The interleaved prompt for one user and its images in order (chosen, rejected per pair)."""
    if len(pairs) == 0:
        raise PixprefError("a user needs at least one pairwise example; got zero pairs")
    parts, images = [PREAMBLE + "\n"], []
    for i, pair in enumerate(pairs):
        prompt, chosen, rejected = _pair_fields(pair)
        if not isinstance(prompt, str) or not prompt.strip():
            raise PixprefError(f"example {i}: the prompt must be a non-empty string")
        parts.append(PAIR_TEMPLATE.format(prompt=prompt.strip(), image=image_token))
        images.append(_to_pil(chosen, f"example {i} chosen image"))
        images.append(_to_pil(rejected, f"example {i} rejected image"))
    parts.append(REQUEST)
    return "".join(parts), images


def image_contrast(hidden_states: Sequence[torch.Tensor], image_mask: torch.Tensor, num_images: Sequence[int]) -> torch.Tensor:
    """Per layer, mean over pairs of (preferred image tokens' mean - dispreferred image tokens' mean).

    image_mask: (B, S) bool, True at image-token positions; images come in (preferred, dispreferred)
    order, each a contiguous run of the same number of tokens. -> (B, L + 1, D)
    """
    out = []
    for b in range(image_mask.shape[0]):
        pos = image_mask[b].nonzero().squeeze(-1)  # (n_img * tokens_per_image,)
        per_image = pos.reshape(num_images[b], -1)  # (n_img, tokens_per_image)
        layers = []
        for h in hidden_states:
            feats = h[b, per_image].mean(1)  # (n_img, D)
            layers.append((feats[0::2] - feats[1::2]).mean(0))  # (D,)
        out.append(torch.stack(layers))
    return torch.stack(out)


def pool_hidden_states(
    hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor, pooling: str
) -> torch.Tensor:
    """hidden_states: tuple of (B, S, D) per layer (embeddings first); left-padded -> (B, T, D)."""
    if pooling == "last_token_all_layers":
        return torch.stack([h[:, -1] for h in hidden_states], dim=1)  # (B, L+1, D)
    if pooling == "last_token_last_layer":
        return hidden_states[-1][:, -1:]  # (B, 1, D)
    if pooling == "mean_last_layer":
        mask = attention_mask[..., None].to(hidden_states[-1].dtype)  # (B, S, 1)
        return (hidden_states[-1] * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)
    raise unknown_name("pooling", pooling, POOLINGS)


class UserEncoder:
    """A frozen VLM plus a pooling rule. Not an nn.Module: nothing here trains."""

    def __init__(self, model: torch.nn.Module, processor: Any, config: UserEncoderConfig | None = None):
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.config = config or UserEncoderConfig()
        tok = processor.tokenizer
        self.image_token = getattr(processor, "image_token", None) or getattr(tok, "image_token", "<image>")
        self._head = None

    @classmethod
    def from_pretrained(
        cls, name_or_path: str = "toy", config: UserEncoderConfig | None = None, device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> UserEncoder:
        from pixpref.models.vlm import load_vlm

        model, processor = load_vlm(name_or_path, dtype=dtype, device=device)
        config = config or UserEncoderConfig(vlm=str(name_or_path))
        return cls(model, processor, config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def head(self):
        """The preference head (pooling="preference_head"), loaded on first use."""
        if self._head is None:
            from pixpref.personalize.preference_head import PreferenceHead

            self._head = PreferenceHead.from_pretrained(self.config.head).to(self.device)
            want = (self.model.config.get_text_config().num_hidden_layers + 1) * self.model.config.get_text_config().hidden_size
            if self._head.config.reading_dim != want:
                raise PixprefError(f"preference head {self.config.head!r} reads {self._head.config.reading_dim}-wide "
                                   f"readings but this VLM gives {want}; train a head on this VLM")
        return self._head

    @property
    def num_tokens(self) -> int:
        """Tokens per user for the configured pooling."""
        if self.config.pooling == "preference_head":
            return 1
        if self.config.pooling in ("last_token_all_layers", "image_contrast_all_layers"):
            return self.model.config.get_text_config().num_hidden_layers + 1
        return 1

    @property
    def embed_dim(self) -> int:
        if self.config.pooling == "preference_head":
            return self.head.config.evidence_dim
        return self.model.config.get_text_config().hidden_size

    @torch.no_grad()
    def read_pairs(self, pairs: Sequence[Any]) -> torch.Tensor:
        """Each example read alone, as shown and with its images swapped -> (N, 2, L + 1, D) image contrasts
        (the preference head's input; cacheable per pair)."""
        if len(pairs) == 0:
            raise PixprefError("read_pairs() needs at least one pairwise example; got zero pairs")
        fields_ = [_pair_fields(p) for p in pairs]
        prompts = [[(p, c, r)] for p, c, r in fields_] + [[(p, r, c)] for p, c, r in fields_]
        bs = self.config.batch_size
        out = torch.cat([self._encode_batch(prompts[s:s + bs], offset=s, pooling="image_contrast_all_layers")
                         for s in range(0, len(prompts), bs)])
        return torch.stack([out[:len(pairs)], out[len(pairs):]], dim=1)

    @torch.no_grad()
    def encode(self, users: Sequence[Sequence[Any]]) -> torch.Tensor:
        """Encode several users' examples -> (num_users, T, D) float32 on CPU."""
        if len(users) == 0:
            raise PixprefError("encode() needs at least one user; got an empty list")
        if self.config.pooling == "preference_head":
            return self._encode_with_head(users)
        if self.config.chunk_pairs:
            return self._encode_in_chunks(users)
        out = []
        bs = self.config.batch_size
        for start in range(0, len(users), bs):
            out.append(self._encode_batch(users[start:start + bs], offset=start))
        return torch.cat(out)

    def _encode_in_chunks(self, users: Sequence[Sequence[Any]]) -> torch.Tensor:
        """Each user's pairs in consecutive prompts of ``chunk_pairs`` (the last may be shorter); the user's
        embedding is the mean of its chunks' embeddings, weighted by their number of pairs. A model trained
        on k-pair prompts so reads more than k pairs without prompts longer than it has seen."""
        n = self.config.chunk_pairs
        chunks, owner, weight, labels = [], [], [], []
        for i, pairs in enumerate(users):
            if len(pairs) == 0:
                raise PixprefError(f"user {i}: a user needs at least one pairwise example; got zero pairs")
            for s in range(0, len(pairs), n):
                chunks.append(list(pairs[s:s + n]))
                owner.append(i)
                weight.append(float(len(chunks[-1])))
                labels.append(f"user {i} (pairs {s + 1}-{s + len(chunks[-1])})")
        bs = self.config.batch_size
        emb = torch.cat([self._encode_batch(chunks[s:s + bs], offset=s, labels=labels[s:s + bs])
                         for s in range(0, len(chunks), bs)])
        owner_t, w = torch.tensor(owner), torch.tensor(weight)
        out = torch.zeros(len(users), *emb.shape[1:], dtype=emb.dtype)
        out.index_add_(0, owner_t, emb * w.view(-1, *([1] * (emb.dim() - 1))))
        total = torch.zeros(len(users)).index_add_(0, owner_t, w)
        return out / total.view(-1, *([1] * (emb.dim() - 1)))

    def _encode_with_head(self, users: Sequence[Sequence[Any]]) -> torch.Tensor:
        for i, pairs in enumerate(users):
            if len(pairs) == 0:
                raise PixprefError(f"user {i}: a user needs at least one pairwise example; got zero pairs")
        readings = self.read_pairs([p for pairs in users for p in pairs]).to(self.device)
        evidence = self.head.evidence(readings[:, 0], readings[:, 1])  # (total pairs, E)
        out, start = [], 0
        for pairs in users:
            out.append(self.head(evidence[None, start:start + len(pairs)]))
            start += len(pairs)
        emb = torch.cat(out).float().cpu()
        if not torch.isfinite(emb).all():
            raise PixprefError("the VLM produced NaN/inf hidden states; check the model weights and dtype")
        return emb

    def encode_one(self, pairs: Sequence[Any]) -> torch.Tensor:
        """One user's examples -> (T, D)."""
        return self.encode([pairs])[0]

    def _encode_batch(self, users: Sequence[Sequence[Any]], offset: int, pooling: str | None = None,
                      labels: Sequence[str] | None = None) -> torch.Tensor:
        pooling = pooling or self.config.pooling
        texts, images = [], []
        for i, pairs in enumerate(users):
            who = labels[i] if labels is not None else f"user {offset + i}"
            if len(pairs) > self.config.max_pairs:
                raise PixprefError(
                    f"{who}: {len(pairs)} examples exceed max_pairs={self.config.max_pairs}; "
                    "split them into chunks (pixpref.data.fewshot) or raise max_pairs"
                )
            try:
                text, ims = build_user_prompt(pairs, self.image_token)
            except PixprefError as e:
                raise PixprefError(f"{who}: {e}") from None
            texts.append(text)
            images.append(ims)
        tok = self.processor.tokenizer
        old_side = tok.padding_side
        tok.padding_side = "left"  # the last position is the prompt's end for every row
        try:
            inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True)
        finally:
            tok.padding_side = old_side
        dtype = next(self.model.parameters()).dtype
        inputs = {k: (v.to(self.device, dtype) if k == "pixel_values" else v.to(self.device)) for k, v in inputs.items()}
        if self.config.generate_tokens > 0 and pooling != "image_contrast_all_layers":
            gen = self.model.generate(
                **inputs, max_new_tokens=self.config.generate_tokens, do_sample=False,
                output_hidden_states=True, return_dict_in_generate=True,
                pad_token_id=tok.pad_token_id,
            )
            hidden = gen.hidden_states[-1]  # last step: tuple of (B, s, D) per layer
            mask = torch.ones(hidden[-1].shape[:2], dtype=torch.long, device=self.device)
        else:
            mask = inputs["attention_mask"]
            # positions count only real tokens, so a left-padded row equals the same user encoded alone
            position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
            hidden = self.model(**inputs, position_ids=position_ids, output_hidden_states=True).hidden_states
            if pooling == "image_contrast_all_layers":
                image_mask = inputs["input_ids"] == self.model.config.image_token_id
                emb = image_contrast(hidden, image_mask, [len(ims) for ims in images]).float().cpu()
                if not torch.isfinite(emb).all():
                    raise PixprefError("the VLM produced NaN/inf hidden states; check the model weights and dtype")
                return emb
        emb = pool_hidden_states(hidden, mask, pooling).float().cpu()
        if not torch.isfinite(emb).all():
            raise PixprefError("the VLM produced NaN/inf hidden states; check the model weights and dtype")
        return emb
