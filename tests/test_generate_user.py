"""The personalization CLI contract: embed-user, then generate with --user / --user-pairs / --user-scale."""

import numpy as np
import pytest
import torch
from PIL import Image

from pixpref.cli import main
from pixpref.data.jsonl import write_jsonl
from pixpref.personalize.embeddings import load_user_embedding, save_user_embedding
from pixpref.toyworld.render import render
from pixpref.toyworld.scene import Scene


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    pairs = [{"prompt": f"a {c} {s}", "user_id": "me",
              "chosen": render(Scene(shape=s, colour=c, size=0.28, bg_lightness=0.9)),
              "rejected": render(Scene(shape=s, colour=c, size=0.13, bg_lightness=0.1))}
             for c, s in [("red", "star"), ("blue", "circle"), ("green", "square"), ("cyan", "cross")]]
    jsonl = root / "pairs.jsonl"
    write_jsonl(pairs, jsonl)
    emb = root / "me.safetensors"
    assert main(["embed-user", "--pairs", str(jsonl), "--out", str(emb)]) == 0
    return jsonl, emb


def _images(folder, n=2):
    return np.stack([np.asarray(Image.open(folder / f"{i:03d}.png")) for i in range(n)])


def _generate(out, *extra):
    args = ["generate", "--prompt", "a red star", "--num-images", "2", "--seed", "3", "--steps", "4", "--out", str(out)]
    return main(args + list(extra))


def test_embed_user_writes_a_profile(user_files):
    _, emb = user_files
    tensor, meta = load_user_embedding(emb)
    assert tensor.shape == (5, 192) and meta["num_pairs"] == "4"
    assert meta["pooling"] == "image_contrast_all_layers"  # what the shipped DPO adapter was trained with


def test_embed_user_reads_many_pairs_in_chunks(user_files, tmp_path, capsys):
    jsonl, four_path = user_files
    many = jsonl.parent / "many.jsonl"  # beside pairs.jsonl: the same relative image paths
    many.write_text(jsonl.read_text() * 3)  # 12 pairs: the four, three times
    assert main(["embed-user", "--pairs", str(many), "--out", str(tmp_path / "one.safetensors")]) == 2
    assert "exceed max_pairs=8" in capsys.readouterr().err
    assert main(["embed-user", "--pairs", str(many), "--out", str(tmp_path / "chunked.safetensors"),
                 "--chunk-pairs", "4"]) == 0
    chunked, meta = load_user_embedding(tmp_path / "chunked.safetensors")
    assert meta["chunk_pairs"] == "4" and meta["num_pairs"] == "12"
    # three chunks holding the same four pairs: their mean is the four pairs' own embedding
    four, _ = load_user_embedding(four_path)
    torch.testing.assert_close(chunked, four, atol=1e-4, rtol=1e-3)
    assert main(["embed-user", "--pairs", str(many), "--out", str(tmp_path / "bad.safetensors"),
                 "--chunk-pairs", "-1"]) == 2
    assert "chunk_pairs must be >= 0" in capsys.readouterr().err and not (tmp_path / "bad.safetensors").exists()


def test_user_scale_zero_is_the_base_model_and_a_user_changes_images(user_files, tmp_path):
    jsonl, emb = user_files
    assert _generate(tmp_path / "base") == 0
    assert _generate(tmp_path / "zero", "--user", str(emb), "--user-scale", "0") == 0
    assert _generate(tmp_path / "user", "--user", str(emb)) == 0
    assert _generate(tmp_path / "pairs", "--user-pairs", str(jsonl)) == 0
    base, zero = _images(tmp_path / "base"), _images(tmp_path / "zero")
    user, pairs = _images(tmp_path / "user"), _images(tmp_path / "pairs")
    assert np.array_equal(base, zero)
    assert not np.array_equal(base, pairs)
    assert np.array_equal(user, pairs)  # the profile and the pairs give the same embedding
    # joint guidance also amplifies the user (guidance 2 on the toy model): images move further from base
    assert _generate(tmp_path / "joint", "--user", str(emb), "--user-guidance", "joint") == 0
    joint = _images(tmp_path / "joint")
    dist = lambda a: np.abs(a.astype(np.int16) - base.astype(np.int16)).mean()  # noqa: E731
    assert dist(joint) > dist(user) > 0


def test_default_user_scale_is_the_adapters_saved_scale(user_files, tmp_path):
    import json
    from pathlib import Path

    _, emb = user_files
    config = Path(__file__).resolve().parent.parent / "pixpref" / "pretrained" / "toy" / "adapter_dpo" / "adapter_config.json"
    saved = json.loads(config.read_text())["scale"]
    assert _generate(tmp_path / "default", "--user", str(emb)) == 0
    assert _generate(tmp_path / "explicit", "--user", str(emb), "--user-scale", str(saved)) == 0
    assert _generate(tmp_path / "double", "--user", str(emb), "--user-scale", str(2 * saved)) == 0
    default = _images(tmp_path / "default")
    assert np.array_equal(default, _images(tmp_path / "explicit"))
    assert not np.array_equal(default, _images(tmp_path / "double"))
    assert json.loads((tmp_path / "default" / "generate.json").read_text())["user_scale"] == saved


def test_bad_user_inputs_exit_2(user_files, tmp_path, capsys):
    jsonl, emb = user_files
    assert _generate(tmp_path / "a", "--user", str(emb), "--user-pairs", str(jsonl)) == 2
    assert "not both" in capsys.readouterr().err
    nan = torch.zeros(5, 192)
    save_user_embedding(tmp_path / "ok.safetensors", nan)
    from safetensors.torch import save_file

    save_file({"user_embedding": torch.full((5, 192), float("nan"))}, str(tmp_path / "nan.safetensors"))
    assert _generate(tmp_path / "b", "--user", str(tmp_path / "nan.safetensors")) == 2
    assert "NaN" in capsys.readouterr().err
    save_user_embedding(tmp_path / "wide.safetensors", torch.zeros(5, 64))
    assert _generate(tmp_path / "c", "--user", str(tmp_path / "wide.safetensors")) == 2
    assert "does not match" in capsys.readouterr().err
    assert _generate(tmp_path / "d", "--user", str(emb), "--user-scale", "nan") == 2
    save_user_embedding(tmp_path / "other.safetensors", torch.zeros(5, 192), {"pooling": "mean_last_layer"})
    assert _generate(tmp_path / "e", "--user", str(tmp_path / "other.safetensors")) == 2
    assert "re-run embed-user" in capsys.readouterr().err
    assert _generate(tmp_path / "f", "--user", str(emb), "--user-start", "0.6", "--user-end", "0.2") == 2
    assert "--user-start" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
