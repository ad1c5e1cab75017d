"""Tiny random models of the real classes, shared by tests (import as ``from tiny import ...``)."""

from __future__ import annotations

import torch


def make_unet(kind: str = "sd15", cross_attention_dim: int | None = None, layers_per_block: int = 1):
    """A tiny UNet2DConditionModel shaped like SD 1.5 (``sd15``) or SDXL (``sdxl``: text_time added
    conditioning, linear projections, 2 transformer layers in the second block). 4 latent channels, 8x8."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if kind == "sd15":
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
            layers_per_block=layers_per_block, norm_num_groups=8, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=cross_attention_dim or 32,
        )
    elif kind == "sdxl":
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
            layers_per_block=layers_per_block, norm_num_groups=8, attention_head_dim=(2, 4),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
            cross_attention_dim=cross_attention_dim or 64,
        )
    else:
        raise ValueError(kind)
    unet.requires_grad_(False)
    return unet.eval()


def sdxl_added(batch: int, generator: torch.Generator | None = None) -> dict:
    """added_cond_kwargs for the tiny SDXL-shaped UNet (pooled text 32 + 6 time ids x 8 = 80)."""
    return {"text_embeds": torch.randn(batch, 32, generator=generator),
            "time_ids": torch.randn(batch, 6, generator=generator)}


TINY_VLM_WORDS = "a an the red green blue star circle square small large on of in with picture photo"


def make_vlm():
    """A tiny LLaVA (CLIP vision 32 px / 8 px patches, 2-layer Llama of width 32) and its processor, with a
    word-level tokenizer built offline over the user-encoder prompt and a few toy words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    from pixpref.personalize.user_encoder import PAIR_TEMPLATE, PREAMBLE, REQUEST

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [PREAMBLE, PAIR_TEMPLATE, REQUEST, TINY_VLM_WORDS]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<s>", "</s>", "<image>"]))
    ftok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    proc = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=ftok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    torch.manual_seed(0)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2),
        text_config=LlamaConfig(vocab_size=len(ftok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                                pad_token_id=ftok.pad_token_id),
        image_token_index=ftok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        image_seq_length=16,
    )
    return LlavaForConditionalGeneration(cfg).eval(), proc
