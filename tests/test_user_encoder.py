"""User encoder on a tiny random LLaVA (same classes as LLaVA-style VLMs), plus profile/cache files."""

import numpy as np
import pytest
import torch

from pixpref.errors import PixprefError
from pixpref.personalize.embeddings import (
    UserEmbeddingCache,
    load_user_embedding,
    precompute_cache,
    save_user_embedding,
)
from pixpref.personalize.user_encoder import UserEncoder, UserEncoderConfig, build_user_prompt


@pytest.fixture(scope="module")
def tiny_vlm():
    from tiny import make_vlm

    return make_vlm()


def _pairs(seed, n=4):
    rng = np.random.default_rng(seed)
    return [("a red star", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
             rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("pooling,tokens", [("last_token_all_layers", 3), ("last_token_last_layer", 1),
                                            ("mean_last_layer", 1), ("image_contrast_all_layers", 3)])
def test_shapes_per_pooling(tiny_vlm, pooling, tokens):
    enc = UserEncoder(*tiny_vlm, UserEncoderConfig(pooling=pooling))
    emb = enc.encode([_pairs(0), _pairs(1)])
    assert emb.shape == (2, tokens, 32) and enc.num_tokens == tokens and enc.embed_dim == 32
    assert torch.isfinite(emb).all()


def test_all_layers_last_token_matches_manual_forward(tiny_vlm):
    model, proc = tiny_vlm
    enc = UserEncoder(model, proc)
    pairs = _pairs(3)
    text, images = build_user_prompt(pairs, "<image>")
    inputs = proc(text=[text], images=[images], return_tensors="pt")
    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states
    expected = torch.stack([h[0, -1] for h in hs])
    torch.testing.assert_close(enc.encode_one(pairs), expected)


def test_batched_equals_one_by_one_with_padding(tiny_vlm):
    enc = UserEncoder(*tiny_vlm, UserEncoderConfig(batch_size=4))
    users = [_pairs(0, 4), _pairs(1, 2), _pairs(2, 1)]  # different lengths -> left padding in the batch
    batched = enc.encode(users)
    for i, u in enumerate(users):
        torch.testing.assert_close(batched[i], enc.encode_one(u), atol=1e-5, rtol=1e-4)


def test_swapping_choices_changes_embedding(tiny_vlm):
    enc = UserEncoder(*tiny_vlm)
    pairs = _pairs(5)
    swapped = [(p, r, c) for p, c, r in pairs]
    assert not torch.allclose(enc.encode_one(pairs), enc.encode_one(swapped))


def test_generate_mode_runs(tiny_vlm):
    enc = UserEncoder(*tiny_vlm, UserEncoderConfig(generate_tokens=3, pooling="last_token_last_layer"))
    assert enc.encode([_pairs(0, 2)]).shape == (1, 1, 32)


def test_bad_inputs(tiny_vlm):
    enc = UserEncoder(*tiny_vlm, UserEncoderConfig(max_pairs=4))
    with pytest.raises(PixprefError, match="zero pairs"):
        enc.encode([[]])
    with pytest.raises(PixprefError, match="empty list"):
        enc.encode([])
    with pytest.raises(PixprefError, match="exceed max_pairs=4"):
        enc.encode([_pairs(0, 5)])
    bad = [("a red star", np.zeros((32, 32, 4), np.uint8), np.zeros((32, 32, 3), np.uint8))]
    with pytest.raises(PixprefError, match="example 0 chosen image"):
        enc.encode([bad])
    with pytest.raises(PixprefError, match="non-empty"):
        enc.encode([[("  ", np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.uint8))]])
    with pytest.raises(PixprefError, match="valid options"):
        UserEncoderConfig(pooling="max")


def test_profile_round_trip_and_validation(tmp_path):
    emb = torch.randn(3, 16)
    path = save_user_embedding(tmp_path / "u.safetensors", emb, {"vlm": "toy", "k": 4})
    loaded, meta = load_user_embedding(path, expected_dim=16)
    assert torch.equal(loaded, emb) and meta["vlm"] == "toy" and meta["k"] == "4"
    with pytest.raises(PixprefError, match="does not match"):
        load_user_embedding(path, expected_dim=32)
    bad = emb.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(PixprefError, match="NaN"):
        save_user_embedding(tmp_path / "nan.safetensors", bad)
    assert not (tmp_path / "nan.safetensors").exists()
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PixprefError, match="not a readable safetensors"):
        load_user_embedding(tmp_path / "junk.safetensors")
    with pytest.raises(PixprefError, match="not found"):
        load_user_embedding(tmp_path / "missing.safetensors")


def test_cache_precompute_and_lookup(tiny_vlm, tmp_path):
    enc = UserEncoder(*tiny_vlm, UserEncoderConfig(batch_size=2))
    chunks = [("u1", 0, _pairs(0)), ("u1", 1, _pairs(1)), ("u2", 0, _pairs(2))]
    cache = precompute_cache(enc, chunks, tmp_path / "cache.safetensors", {"k": 4}, progress=False)
    again = UserEmbeddingCache.load(tmp_path / "cache.safetensors")
    assert sorted(again.users()) == ["u1", "u2"] and again.chunks_for("u1") == ["0", "1"]
    torch.testing.assert_close(again.get("u1", 1), enc.encode_one(_pairs(1)), atol=1e-5, rtol=1e-4)
    assert torch.equal(cache.get("u2", 0), again.get("u2", 0))
    with pytest.raises(PixprefError, match="no cached embedding"):
        again.get("u3", 0)
    with pytest.raises(PixprefError, match="no example chunks"):
        precompute_cache(enc, [], tmp_path / "empty.safetensors")


def test_image_contrast_matches_manual_and_flips_sign(tiny_vlm):
    model, proc = tiny_vlm
    enc = UserEncoder(model, proc, UserEncoderConfig(pooling="image_contrast_all_layers"))
    pairs = _pairs(7, n=2)
    text, images = build_user_prompt(pairs, "<image>")
    inputs = proc(text=[text], images=[images], return_tensors="pt")
    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states
    pos = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().squeeze(-1).reshape(4, -1)
    expected = torch.stack([((h[0, pos[0]].mean(0) - h[0, pos[1]].mean(0))
                             + (h[0, pos[2]].mean(0) - h[0, pos[3]].mean(0))) / 2 for h in hs])
    got = enc.encode_one(pairs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # the embedding layer's contrast is exactly antisymmetric when every choice is swapped
    swapped = enc.encode_one([(p, r, c) for p, c, r in pairs])
    torch.testing.assert_close(swapped[0], -got[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(PixprefError, match="generate_tokens: 0"):
        UserEncoderConfig(pooling="image_contrast_all_layers", generate_tokens=2)


def test_cache_made_by_other_vlm_weights_is_refused(tmp_path):
    """A retrained VLM saved under the same name makes old user embeddings stale: the cache's metadata
    holds a fingerprint of the weights, and check_cache names it."""
    from types import SimpleNamespace

    from tiny import make_vlm

    from pixpref.personalize.user_cache import cache_metadata, check_cache

    model, processor = make_vlm()
    folder = tmp_path / "vlm"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    user_cfg = SimpleNamespace(source="vlm", vlm=str(folder), pooling="last_token_all_layers",
                               generate_tokens=0, users_file=None)
    arrays = SimpleNamespace(index=[7], prompts=["a red star"])
    chunks = [SimpleNamespace(user_id="u0", chunk=0, indices=[0])]
    meta = cache_metadata(user_cfg, arrays, chunks)
    cache = UserEmbeddingCache({"u0/0": torch.zeros(1, 4)}, meta)
    assert check_cache(cache, user_cfg, arrays, chunks, tmp_path / "c.safetensors") is cache
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(folder)  # same folder, other weights
    with pytest.raises(PixprefError, match="vlm_weights"):
        check_cache(cache, user_cfg, arrays, chunks, tmp_path / "c.safetensors")


@pytest.mark.parametrize("pooling", ["last_token_all_layers", "image_contrast_all_layers"])
def test_chunked_reading_is_the_pair_weighted_mean_of_the_chunks(tiny_vlm, pooling):
    plain = UserEncoder(*tiny_vlm, UserEncoderConfig(pooling=pooling))
    chunked = UserEncoder(*tiny_vlm, UserEncoderConfig(pooling=pooling, chunk_pairs=2, batch_size=3))
    five, three = _pairs(5, 5), _pairs(6, 3)
    got = chunked.encode([five, three])
    # chunks of 2, 2, 1 and 2, 1 pairs, each read in its own prompt, averaged by their number of pairs
    want5 = (2 * plain.encode_one(five[:2]) + 2 * plain.encode_one(five[2:4]) + plain.encode_one(five[4:])) / 5
    want3 = (2 * plain.encode_one(three[:2]) + plain.encode_one(three[2:])) / 3
    torch.testing.assert_close(got[0], want5, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[1], want3, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got[0], plain.encode_one(five), atol=1e-3)  # one long prompt reads differently
    # a user with no more pairs than a chunk is read exactly as without chunking
    torch.testing.assert_close(chunked.encode([five[:2]])[0], plain.encode_one(five[:2]), atol=1e-5, rtol=1e-4)


def test_chunked_reading_errors_name_the_user_and_pairs(tiny_vlm):
    enc = UserEncoder(*tiny_vlm, UserEncoderConfig(chunk_pairs=2))
    bad = _pairs(0, 3) + [("a red star", np.zeros((32, 32, 4), np.uint8), np.zeros((32, 32, 3), np.uint8))]
    with pytest.raises(PixprefError, match=r"user 1 \(pairs 3-4\): example 1 chosen image"):
        enc.encode([_pairs(1, 2), bad])
    with pytest.raises(PixprefError, match="user 0: .*zero pairs"):
        enc.encode([[]])
    with pytest.raises(PixprefError, match="chunk_pairs must be >= 0"):
        UserEncoderConfig(chunk_pairs=-1)
    with pytest.raises(PixprefError, match="does not apply to pooling preference_head"):
        UserEncoderConfig(pooling="preference_head", chunk_pairs=4)
