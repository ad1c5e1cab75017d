"""The VLM loader and the toy LLaVA: tiny random models of the real classes, built offline."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pixpref.errors import PixprefError
from pixpref.models.vlm import (
    TOY_VLM_DIR,
    ToyVLMSpec,
    build_processor,
    build_tokenizer,
    build_toy_vlm,
    image_token_count,
    load_vlm,
    save_vlm,
)
from pixpref.pretrain.vlm import (
    CAPTION_QUESTION,
    encode_example,
    make_example,
    pixel_tensor,
    tokenizer_corpus,
)
from pixpref.toyworld.render import render_batch
from pixpref.toyworld.scene import sample_scene

TINY = ToyVLMSpec(vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64, text_hidden=32,
                  text_layers=2, text_heads=2, text_intermediate=64, max_positions=512, vocab_size=320)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random LLaVA saved with save_pretrained (fp16)."""
    tok = build_tokenizer(tokenizer_corpus(np.random.default_rng(0), 100), TINY.vocab_size)
    processor = build_processor(tok, TINY)
    model = build_toy_vlm(TINY, tok, seed=0)
    folder = tmp_path_factory.mktemp("tiny_vlm")
    save_vlm(model, processor, folder)
    return folder


def _pairs_messages(n_pairs: int):
    content = [{"type": "text", "text": "You will be shown a few examples of preferred and dispreferred images."}]
    for i in range(n_pairs):
        content += [{"type": "text", "text": f" Pair {i + 1}: a red star. Preferred: "}, {"type": "image"},
                    {"type": "text", "text": " Dispreferred: "}, {"type": "image"}]
    content.append({"type": "text", "text": " User Profile:"})
    return [{"role": "user", "content": content}]


def test_tiny_llava_round_trip_and_eight_image_prompt(tiny_folder):
    from PIL import Image
    from transformers import LlavaForConditionalGeneration

    model, processor = load_vlm(tiny_folder)  # the same function that loads "toy"
    assert isinstance(model, LlavaForConditionalGeneration)
    assert model.dtype == torch.float32 and not model.training
    rng = np.random.default_rng(1)
    arrays = render_batch([sample_scene(rng) for _ in range(8)])
    images = [Image.fromarray(a) for a in arrays]
    text = processor.apply_chat_template(_pairs_messages(4), add_generation_prompt=True)
    enc = processor(text=text, images=images, return_tensors="pt")
    n_img = int((enc["input_ids"] == model.config.image_token_id).sum())
    assert n_img == 8 * TINY.image_tokens == 8 * image_token_count(processor)
    assert enc["input_ids"].shape[1] <= model.config.get_text_config().max_position_embeddings
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
        assert len(out.hidden_states) == TINY.text_layers + 1
        assert out.hidden_states[-1].shape == (1, enc["input_ids"].shape[1], TINY.text_hidden)
        # the images reach the hidden states: change one image, the last token changes
        enc2 = dict(enc)
        enc2["pixel_values"] = enc["pixel_values"].clone()
        enc2["pixel_values"][5] = -enc2["pixel_values"][5]
        out2 = model(**enc2, output_hidden_states=True)
    assert not torch.allclose(out.hidden_states[-1][0, -1], out2.hidden_states[-1][0, -1])


def test_weights_are_fp16_on_disk(tiny_folder):
    from safetensors import safe_open

    with safe_open(str(tiny_folder / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float16}


def test_load_vlm_dtype_and_errors(tiny_folder, tmp_path):
    model, _ = load_vlm(str(tiny_folder), dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(PixprefError, match="valid options: toy"):
        load_vlm("llava-13b-from-the-internet")
    with pytest.raises(PixprefError, match="no config.json"):
        load_vlm(tmp_path)
    with pytest.raises(PixprefError, match="valid options"):
        load_vlm(tiny_folder, dtype="float8")


def test_training_fast_path_matches_processor(tiny_folder):
    """encode_example / pixel_tensor (used in pretraining) reproduce what the processor does."""
    from PIL import Image

    _, processor = load_vlm(tiny_folder)
    rng = np.random.default_rng(2)
    scenes = [sample_scene(rng) for _ in range(8)]
    arrays = render_batch(scenes)
    for task, n in (("caption", 1), ("compare", 2), ("pairs", 8)):
        messages, used, answer = make_example(task, np.arange(n), scenes, rng)
        ids, n_prompt = encode_example(processor, messages, answer)
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        enc = processor(text=text, images=[Image.fromarray(arrays[i]) for i in used], return_tensors="pt")
        assert ids[:n_prompt] == enc["input_ids"][0].tolist()
        assert ids[-1] == processor.tokenizer.eos_token_id
        assert processor.tokenizer.decode(ids[n_prompt:], skip_special_tokens=True).strip() == answer
        assert torch.allclose(pixel_tensor(arrays[used], processor), enc["pixel_values"], atol=1e-5)
    assert CAPTION_QUESTION in processor.apply_chat_template(make_example("caption", [0], scenes, rng)[0])


def test_shipped_toy_models_load_offline():
    """The shipped toy VLM and CLIP load with HF_HUB_OFFLINE=1 in a fresh process; the VLM captions."""
    assert (TOY_VLM_DIR / "config.json").is_file(), "shipped toy VLM folder is missing"
    code = (
        "import numpy as np\n"
        "from pixpref.models.vlm import load_vlm\n"
        "from pixpref.models.clip import load_clip\n"
        "from pixpref.pretrain.vlm import generate_captions, parse_caption\n"
        "from pixpref.toyworld.render import render_batch\n"
        "from pixpref.toyworld.scene import Scene\n"
        "m, p = load_vlm('toy')\n"
        "cap = generate_captions(m, p, render_batch([Scene('star', 'red', size=0.28)]))[0]\n"
        "print(cap); assert parse_caption(cap) is not None, cap\n"
        "c, pre, tok = load_clip('toy')\n"
        "print(type(c).__name__, tok(['a red star']).shape)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "CLIP" in res.stdout


def test_load_vlm_reads_a_llava_onevision_folder(tmp_path):
    """The PPD VLM class (LLaVA-OneVision: SigLIP + Qwen2, anyres) through the same loader, 8 images."""
    from PIL import Image
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    from pixpref.models.vlm import build_tokenizer as bpe

    tok = bpe(["a red star. Preferred: Dispreferred:", "<video>"], 300)
    tok.add_special_tokens({"additional_special_tokens": ["<video>"]})
    grid = [[16, 16], [16, 32], [32, 16], [32, 32]]
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(
            size={"height": 16, "width": 16}, crop_size={"height": 16, "width": 16}, image_grid_pinpoints=grid),
        tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(size={"height": 16, "width": 16}),
        num_image_tokens=4,
        vision_feature_select_strategy="full",
    )
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=16, patch_size=8),
        text_config=Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1, image_grid_pinpoints=grid,
    )
    torch.manual_seed(0)
    LlavaOnevisionForConditionalGeneration(config).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    model, proc = load_vlm(tmp_path)
    assert isinstance(model, LlavaOnevisionForConditionalGeneration)
    assert isinstance(proc, LlavaOnevisionProcessor)
    rng = np.random.default_rng(3)
    images = [Image.fromarray(a) for a in render_batch([sample_scene(rng) for _ in range(8)])]
    enc = proc(text="a red star. Preferred: <image> Dispreferred: <image>" * 4, images=images, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape[-1] == 16


def test_shipped_toy_vlm_captions_held_out_images():
    """Floors for the shipped toy VLM's greedy captions on fresh scenes (another seed than the script's).
    ``scripts/eval_vlm.py --n 400`` measured shape 0.935 on all scenes (0.993 on seen combinations, 0.760 on
    held-out ones), colour 0.990, style words 0.93 - 1.00; here (240 scenes) shape 0.929 and 0.750. The
    floors are those minus the noise of these scenes. The VLM shipped before the colour-swap stage
    (shape 0.875 / held-out 0.55 here) fails the shape floors; the one before it (shape 0.35) fails size too."""
    from pixpref.models.vlm import load_vlm
    from pixpref.pretrain.vlm import caption_accuracy, held_out_scenes

    model, processor = load_vlm("toy")
    scenes = held_out_scenes(240, seed=2024)  # every 4th scene: a held-out shape-colour combination
    res = caption_accuracy(model.float(), processor, scenes)
    assert res["parsed"] == 1.0
    seen = [h for i, h in enumerate(res["hits"]) if i % 4 != 3]
    held = [h for i, h in enumerate(res["hits"]) if i % 4 == 3]
    rate = {a: sum(h[a] for h in seen) / len(seen) for a in ("colour", "shape")}
    assert rate["colour"] >= 0.95 and rate["shape"] >= 0.95, rate
    assert res["accuracy"]["shape"] >= 0.90, res["accuracy"]["shape"]  # the content target, all scenes
    assert sum(h["shape"] for h in held) / len(held) >= 0.65
    for attr in ("size", "shade", "texture", "outline", "horizontal", "vertical", "background"):
        assert res["accuracy"][attr] >= 0.85, (attr, res["accuracy"][attr])
