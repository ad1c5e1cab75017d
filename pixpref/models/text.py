"""Offline text side of the toy base model: a word-level tokenizer and a small CLIP text encoder.

No tokenizer or text encoder can be downloaded here, so the toy model builds its own:

* a word-level tokenizer over the toy-world vocabulary (prompt templates, colours, shapes and the style
  words of captions), made with the ``tokenizers`` library and wrapped as a
  :class:`transformers.PreTrainedTokenizerFast` so ``save_pretrained`` / ``from_pretrained`` round-trip
  exactly as a real ``CLIPTokenizer`` folder does;
* a randomly initialised :class:`transformers.CLIPTextModel` of the given width, trained jointly with the
  UNet. Its ``last_hidden_state`` ``(B, T, D)`` is what the UNet cross-attends to, as in SD 1.5.

Unknown words map to ``<unk>``; text is lower-cased and split on whitespace and punctuation.
"""

from __future__ import annotations

import re

from pixpref.toyworld.scene import COLOURS, OUTLINES, PROMPT_TEMPLATES, SHADES, SHAPES, TEXTURES

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3, in this order
DEFAULT_MAX_LENGTH = 16

# style words used in captions (pixpref.toyworld.scene.caption); included so later stages can reuse the
# tokenizer for style-aware prompts without changing the vocabulary.
_STYLE_WORDS = (
    "small medium large left centre right top middle bottom dark grey light outlined plain solid striped "
    "dotted at the on background"
)


def toy_vocabulary() -> list[str]:
    """Sorted word list of the toy world (without special tokens)."""
    words: set[str] = set()
    for template in PROMPT_TEMPLATES:
        words.update(re.findall(r"[a-z]+", template.replace("{colour}", "").replace("{shape}", "")))
    words.update(SHAPES)
    words.update(COLOURS)
    words.update(SHADES)
    words.update(TEXTURES)
    words.update(OUTLINES)
    words.update(_STYLE_WORDS.split())
    words.update([",", ".", "-"])
    return sorted(words)


def build_tokenizer(max_length: int = DEFAULT_MAX_LENGTH, words: list[str] | None = None):
    """Build the word-level tokenizer -> ``PreTrainedTokenizerFast`` (pads to ``max_length``).

    Encoding ``"a red star"`` gives ``<bos> a red star <eos> <pad> ...``; the empty prompt (used for
    classifier-free guidance) gives ``<bos> <eos> <pad> ...``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = toy_vocabulary() if words is None else list(words)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=max_length,
        padding_side="right",
    )


def build_text_encoder(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_length: int = DEFAULT_MAX_LENGTH,
    seed: int = 0,
):
    """A randomly initialised ``CLIPTextModel``; its hidden size is the UNet's ``cross_attention_dim``."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=max_length,
        pad_token_id=SPECIAL_TOKENS.index(PAD),
        bos_token_id=SPECIAL_TOKENS.index(BOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
        projection_dim=hidden_size,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(config)
