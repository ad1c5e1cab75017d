"""The CLIP loader: open_clip configs, weight files, the pickle refusal and token outputs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from pixpref.errors import PixprefError
from pixpref.models.clip import (
    TOY_CLIP_CONFIG,
    clip_config_names,
    create_clip,
    encode_image_tokens,
    encode_text_tokens,
    load_clip,
    read_state_dict,
    save_clip,
)
from pixpref.pretrain.clip import pixel_tensor
from pixpref.toyworld.render import render_batch
from pixpref.toyworld.scene import sample_scene


@pytest.fixture(scope="module")
def toy_arch():
    torch.manual_seed(0)
    model, preprocess, tokenizer = create_clip(TOY_CLIP_CONFIG)
    return model.eval(), preprocess, tokenizer


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return render_batch([sample_scene(rng) for _ in range(4)])  # (4, 32, 32, 3) uint8


def test_configs_registered():
    import open_clip

    names = clip_config_names()
    assert TOY_CLIP_CONFIG in names and "ViT-H-14" in names
    cfg = open_clip.get_model_config("ViT-H-14")
    assert cfg["vision_cfg"]["width"] == 1280 and cfg["embed_dim"] == 1024


def test_folder_round_trip(toy_arch, images, tmp_path):
    model, _, tokenizer = toy_arch
    save_clip(model, TOY_CLIP_CONFIG, tmp_path / "clip")
    loaded, preprocess, tok2 = load_clip(tmp_path / "clip")
    assert not loaded.training
    x = pixel_tensor(images, loaded)
    text = tokenizer(["a red star", "a small dark blue square, dotted, plain, at the top left, on a light background"])
    assert torch.equal(text, tok2(["a red star", "a small dark blue square, dotted, plain, at the top left, "
                                   "on a light background"]))
    with torch.no_grad():
        ref = model.half().float()  # fp16 on disk: compare with the rounded weights
        assert torch.allclose(loaded.encode_image(x), ref.encode_image(x), atol=1e-4)
        assert torch.allclose(loaded.encode_text(text), ref.encode_text(text), atol=1e-4)


def test_preprocess_fast_path_matches_open_clip(toy_arch, images):
    from PIL import Image

    model, preprocess, _ = toy_arch
    expected = torch.stack([preprocess(Image.fromarray(a)) for a in images])
    assert torch.allclose(pixel_tensor(images, model), expected, atol=1e-5)


def test_config_name_plus_weights_files(toy_arch, images, tmp_path):
    """safetensors and HPS-v2-style torch checkpoints ({'state_dict': ...} with 'module.' prefixes)."""
    from safetensors.torch import save_file

    model, _, _ = toy_arch
    sd = model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "hps.pt")
    x = pixel_tensor(images, model)
    with torch.no_grad():
        want = model.encode_image(x)
        for path in (tmp_path / "w.safetensors", tmp_path / "hps.pt"):
            loaded, _, _ = load_clip(TOY_CLIP_CONFIG, weights=path)
            assert torch.allclose(loaded.encode_image(x), want, atol=1e-6)
    with pytest.raises(PixprefError, match="needs a local weights file"):
        load_clip("ViT-H-14")
    with pytest.raises(PixprefError, match="valid options: .*toy"):
        load_clip("ViT-Z-99")
    # wrong architecture for the weights: a clear mismatch error
    torch.save({k: v for k, v in list(sd.items())[:-3]}, tmp_path / "partial.pt")
    with pytest.raises(PixprefError, match="do not match"):
        load_clip(TOY_CLIP_CONFIG, weights=tmp_path / "partial.pt")


class _Payload:
    """An object whose unpickling would run a command."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickled_objects_are_refused(toy_arch, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Payload(str(marker))}, f, protocol=2)
    with pytest.raises(PixprefError, match="refusing to load .*not a plain state dict"):
        read_state_dict(evil)
    with pytest.raises(PixprefError, match="refusing"):
        load_clip(TOY_CLIP_CONFIG, weights=evil)
    assert not marker.exists()
    # a whole pickled model (torch.save(model)) is refused the same way
    whole = tmp_path / "whole.pt"
    torch.save(toy_arch[0], whole)
    with pytest.raises(PixprefError, match="whole model"):
        read_state_dict(whole)


def test_token_outputs(toy_arch, images):
    model, _, tokenizer = toy_arch
    x = pixel_tensor(images, model)
    ids = tokenizer(["a red star", "a blue circle", "a green cross", "a cyan square"])
    with torch.no_grad():
        pooled, tokens = encode_image_tokens(model, x)
        assert torch.allclose(pooled, model.encode_image(x), atol=1e-6)
        assert tokens.shape == (4, (32 // 4) ** 2, 128)  # (B, patches, vision width)
        assert model.visual.output_tokens is False  # switch restored
        tpooled, ttokens = encode_text_tokens(model, ids)
        assert torch.allclose(tpooled, model.encode_text(ids), atol=1e-6)
        assert ttokens.shape == (4, 32, 64)  # (B, context, text width)
