"""Vision-language models: the toy LLaVA and the loader shared with real LLaVA-OneVision / Qwen2-VL folders.

The toy VLM is a real ``transformers`` ``LlavaForConditionalGeneration``: a small CLIP vision tower
(32x32 images, 8x8 patches -> 16 image tokens per image) feeding a small Llama through LLaVA's projector.
Its tokenizer is a byte-level BPE trained offline on the toy world's text, wrapped in
``PreTrainedTokenizerFast``; its processor is a ``LlavaProcessor`` with a chat template, so the same
``processor.apply_chat_template(messages)`` code builds prompts for the toy and the real models.

    model, processor = load_vlm("toy")                     # shipped folder (pixpref/pretrained/toy/vlm)
    model, processor = load_vlm("/models/llava-onevision")  # any local transformers VLM folder

Nothing is downloaded: folders are read with ``local_files_only=True`` and never with remote code.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pixpref.errors import PixprefError, unknown_name

if TYPE_CHECKING:  # heavy imports stay inside functions
    import torch

TOY_VLM_DIR = Path(__file__).resolve().parent.parent / "pretrained" / "toy" / "vlm"
VLM_NAMES = {"toy": TOY_VLM_DIR}

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", IMAGE_TOKEN)

# One template for every toy prompt: "USER: <text and <image> markers>\nASSISTANT: <answer></s>\n".
# Content items follow the transformers convention: {"type": "image"} / {"type": "text", "text": ...}.
TOY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass
class ToyVLMSpec:
    """Dimensions of the toy LLaVA (vision tower + projector + Llama)."""

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    vision_intermediate: int = 256
    text_hidden: int = 192
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 512
    max_positions: int = 512
    vocab_size: int = 512

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise PixprefError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        for name in ("vision_hidden", "text_hidden"):
            heads = getattr(self, name.replace("hidden", "heads"))
            if getattr(self, name) % heads:
                raise PixprefError(f"{name} {getattr(self, name)} must be divisible by its head count {heads}")

    @property
    def image_tokens(self) -> int:
        """Tokens per image in the LM sequence ('default' strategy drops the CLS token)."""
        return (self.image_size // self.patch_size) ** 2


# ---- building (offline, from configs) ------------------------------------------------------------------


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> Any:
    """Train a byte-level BPE on ``corpus`` and wrap it as a ``PreTrainedTokenizerFast``.

    Byte-level means any text can be encoded (unknown words fall back to bytes); ``<image>`` is a
    special token that is never split.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def build_processor(tokenizer: Any, spec: ToyVLMSpec) -> Any:
    """A ``LlavaProcessor`` for 32 px images (PIL-based CLIP image processor, no torchvision needed)."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    size = spec.image_size
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_convert_rgb=True
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLIP class token, dropped by the 'default' strategy
        chat_template=TOY_CHAT_TEMPLATE,
    )


def build_toy_vlm(spec: ToyVLMSpec, tokenizer: Any, seed: int = 0) -> Any:
    """A randomly initialised ``LlavaForConditionalGeneration`` with the toy dimensions."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=spec.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=spec.image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    gen.do_sample = False
    return model


def save_vlm(model: Any, processor: Any, out_dir: str | Path, fp16: bool = True) -> Path:
    """Save model (safetensors, fp16 by default) and processor with ``save_pretrained``."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fp16:
        model = model.to(torch.float16)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


@dataclass
class VLMConfig:
    """Which VLM to load and how (configs/vlm/*.yaml): ``load_vlm(**asdict(cfg))``."""

    name_or_path: str = "toy"  # "toy" or a local save_pretrained folder (never downloaded)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"


# ---- loading --------------------------------------------------------------------------------------------


def resolve_vlm_path(name_or_path: str | Path) -> Path:
    """Map a registered name ('toy') or a local folder to a folder; unknown names list the valid ones."""
    key = str(name_or_path)
    if key in VLM_NAMES:
        path = VLM_NAMES[key]
        if not (path / "config.json").is_file():
            raise PixprefError(
                f"the shipped {key!r} VLM is missing at {path}; rebuild it with "
                "`pixpref pretrain toy --only vlm` or reinstall pixpref"
            )
        return path
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PixprefError(f"VLM folder {path} has no config.json (expected a save_pretrained folder)")
        return path
    raise unknown_name("VLM (a registered name or an existing local folder)", key, VLM_NAMES)


def load_vlm(
    name_or_path: str | Path = "toy",
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Any, Any]:
    """Load a VLM and its processor -> ``(model, processor)``, the model in eval mode.

    ``name_or_path`` is ``"toy"`` (the shipped toy LLaVA) or a local folder written by
    ``save_pretrained`` (LLaVA, LLaVA-OneVision, Qwen2-VL, ...). ``dtype`` defaults to float32 (CPU
    default); pass ``torch.float16``/``bfloat16`` or their names for GPUs. Never downloads, never runs
    remote code.
    """
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = resolve_vlm_path(name_or_path)
    if dtype is None:
        dtype = torch.float32
    if isinstance(dtype, str):
        valid = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if dtype not in valid:
            raise unknown_name("dtype", dtype, valid)
        dtype = valid[dtype]
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype, local_files_only=True, trust_remote_code=False
        )
        processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise PixprefError(f"could not load a VLM from {path}: {str(e).splitlines()[0]}") from e
    model.to(device).eval()
    return model, processor


def load_vlm_from_config(cfg: VLMConfig) -> tuple[Any, Any]:
    """``load_vlm`` with the settings of a :class:`VLMConfig`."""
    return load_vlm(cfg.name_or_path, dtype=cfg.dtype, device=cfg.device)


def image_token_count(processor: Any) -> int:
    """Image tokens per 1-image LLaVA prompt (after processor expansion)."""
    patch = processor.patch_size
    crop = processor.image_processor.crop_size
    n = (crop["height"] // patch) * (crop["width"] // patch) + processor.num_additional_image_tokens
    return n - 1 if processor.vision_feature_select_strategy == "default" else n
