"""Preference head: antisymmetric per-pair evidence, the prototype posterior, save/load, learning a latent-class
population, and the user encoder's ``preference_head`` pooling on a tiny random LLaVA."""

import math

import numpy as np
import pytest
import torch

from pixpref.errors import PixprefError
from pixpref.personalize.preference_head import (
    PreferenceHead,
    PreferenceHeadConfig,
    group_rows,
    heldout_choice_accuracy,
    sample_episodes,
)
from pixpref.personalize.user_encoder import UserEncoder, UserEncoderConfig


def test_evidence_is_antisymmetric_and_mask_ignores_padding():
    torch.manual_seed(0)
    head = PreferenceHead(PreferenceHeadConfig(reading_dim=12, evidence_dim=4, num_prototypes=5, hidden_dim=8))
    head.eval()
    a, b = torch.randn(3, 12), torch.randn(3, 12)
    assert torch.allclose(head.evidence(a, b), -head.evidence(b, a))
    ev = head.evidence(a, b)[None]  # (1, 3, 4)
    padded = torch.cat([ev, torch.randn(1, 2, 4)], 1)
    mask = torch.tensor([[1.0, 1, 1, 0, 0]])
    assert torch.allclose(head(padded, mask), head(ev), atol=1e-6)
    assert not torch.allclose(head(padded), head(ev))


def test_posterior_matches_hand_computed_bradley_terry():
    head = PreferenceHead(PreferenceHeadConfig(reading_dim=2, evidence_dim=2, num_prototypes=2))
    with torch.no_grad():
        head.prototypes.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    e = torch.tensor([[[1.0, -1.0], [0.5, 0.0]]])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    lik = [sig(2.0) * sig(1.0), sig(-2.0) * sig(0.0)]
    want = torch.tensor([lik[0], lik[1]]) / sum(lik)
    assert torch.allclose(head.posterior(e)[0], want, atol=1e-6)
    assert torch.allclose(head(e)[0, 0], want @ head.prototypes.detach(), atol=1e-6)


def test_save_load_round_trip_and_errors(tmp_path):
    torch.manual_seed(1)
    head = PreferenceHead(PreferenceHeadConfig(reading_dim=6, evidence_dim=3, num_prototypes=4))
    head.set_normalization(torch.randn(50, 6) * 3 + 1)
    head.save_pretrained(tmp_path / "h")
    again = PreferenceHead.from_pretrained(tmp_path / "h")
    x, y = torch.randn(2, 6), torch.randn(2, 6)
    assert torch.equal(head.eval().evidence(x, y), again.evidence(x, y))
    with pytest.raises(PixprefError, match="toy"):
        PreferenceHead.from_pretrained(tmp_path / "missing")
    with pytest.raises(PixprefError, match="unknown preference head config keys"):
        PreferenceHeadConfig.from_dict({"reading_dim": 4, "evidence_dimm": 3})
    with pytest.raises(PixprefError, match="reading_dim"):
        PreferenceHeadConfig(reading_dim=0)
    with pytest.raises(PixprefError, match="width 6"):
        head.evidence(torch.randn(2, 5), torch.randn(2, 5))


def test_episodes_keep_context_and_queries_apart():
    by_user = group_rows(["a"] * 12 + ["b"] * 12 + ["c"] * 3)
    ctx, mask, qry = sample_episodes(by_user, batch=20, max_context=4, queries=6, generator=torch.Generator().manual_seed(0))
    for c, m, q in zip(ctx, mask, qry):
        k = int(m.sum())
        assert 1 <= k <= 4 and set(c[:k].tolist()).isdisjoint(q.tolist())
        assert 27 - 3 > max(c[:k].tolist() + q.tolist())  # user c (too few pairs) is never drawn
        owner = {r // 12 for r in c[:k].tolist() + q.tolist()}
        assert len(owner) == 1
    with pytest.raises(PixprefError, match="max_context"):
        sample_episodes(by_user, 2, max_context=10, queries=10, generator=torch.Generator())


def _latent_class_users(n_users=60, pairs=30, dim=10, classes=4, seed=0):
    """Readings are noisy linear views of each pair's feature difference; users are copies of a few tastes."""
    g = torch.Generator().manual_seed(seed)
    tastes = torch.randn(classes, dim, generator=g)
    view = torch.randn(dim, 16, generator=g)
    fwd, swp, users = [], [], []
    for u in range(n_users):
        w = tastes[u % classes]
        d = torch.randn(pairs, dim, generator=g)
        d = torch.where((d @ w > 0)[:, None], d, -d)  # the user chose the first image (noise-free)
        fwd.append(d @ view + 0.1 * torch.randn(pairs, 16, generator=g))
        swp.append(-d @ view + 0.1 * torch.randn(pairs, 16, generator=g))
        users += [f"u{u}"] * pairs
    return torch.stack([torch.cat(fwd), torch.cat(swp)], 1), users


def test_head_learns_a_latent_class_population():
    readings, users = _latent_class_users()
    by_user = group_rows(users)
    train = {u: r for u, r in by_user.items() if int(u[1:]) < 48}
    unseen = {u: r for u, r in by_user.items() if int(u[1:]) >= 48}
    torch.manual_seed(0)
    head = PreferenceHead(PreferenceHeadConfig(reading_dim=16, evidence_dim=8, num_prototypes=8))
    head.set_normalization(readings[torch.cat(list(train.values()))].reshape(-1, 16))
    before = heldout_choice_accuracy(head, readings, unseen, k=4)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        ctx, mask, qry = sample_episodes(train, 32, 8, 8, gen)
        user = head(head.evidence(readings[ctx, 0], readings[ctx, 1]), mask)
        loss = torch.nn.functional.softplus(-head.choice_logits(user, head.evidence(readings[qry, 0], readings[qry, 1])))
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    acc = {k: heldout_choice_accuracy(head, readings, unseen, k=k) for k in (1, 4)}
    assert acc[4] > 0.85 > before + 0.2, (before, acc)
    assert acc[4] >= acc[1]


@pytest.fixture(scope="module")
def tiny_vlm():
    from tiny import make_vlm

    return make_vlm()


def _pairs(seed, n=3):
    rng = np.random.default_rng(seed)
    return [("a red star", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
             rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def test_user_encoder_preference_head_pooling(tiny_vlm, tmp_path):
    model, processor = tiny_vlm
    text = model.config.get_text_config()
    width = (text.num_hidden_layers + 1) * text.hidden_size
    torch.manual_seed(0)
    PreferenceHead(PreferenceHeadConfig(reading_dim=width, evidence_dim=5, num_prototypes=6)).save_pretrained(tmp_path / "h")
    enc = UserEncoder(model, processor, UserEncoderConfig(pooling="preference_head", head=str(tmp_path / "h"), batch_size=4))
    assert (enc.num_tokens, enc.embed_dim) == (1, 5)
    users = [_pairs(0), _pairs(1, n=1), _pairs(2, n=5)]
    emb = enc.encode(users)
    assert emb.shape == (3, 1, 5) and torch.isfinite(emb).all()
    for i, u in enumerate(users):  # batching (and other users' pairs in the same VLM batch) changes nothing
        assert torch.allclose(enc.encode_one(u), emb[i], atol=1e-5)
    readings = enc.read_pairs(users[0])
    assert readings.shape == (3, 2, text.num_hidden_layers + 1, text.hidden_size)
    swapped = [(p, r, c) for p, c, r in users[0]]
    assert torch.allclose(enc.read_pairs(swapped), readings.flip(1), atol=1e-5)
    assert not torch.allclose(enc.encode_one(swapped), emb[0])
    with pytest.raises(PixprefError, match="zero pairs"):
        enc.encode([[]])
    PreferenceHead(PreferenceHeadConfig(reading_dim=width + 1)).save_pretrained(tmp_path / "wrong")
    bad = UserEncoder(model, processor, UserEncoderConfig(pooling="preference_head", head=str(tmp_path / "wrong")))
    with pytest.raises(PixprefError, match="train a head on this VLM"):
        bad.encode([_pairs(0)])
    with pytest.raises(PixprefError, match="generate_tokens"):
        UserEncoderConfig(pooling="preference_head", generate_tokens=2)


def test_cache_chunks_equal_encoding_each_chunk(tiny_vlm, tmp_path):
    from pixpref.data.fewshot import FewShotChunk
    from pixpref.personalize.dataset import PairArrays
    from pixpref.personalize.user_cache import head_chunk_embeddings

    model, processor = tiny_vlm
    text = model.config.get_text_config()
    PreferenceHead(PreferenceHeadConfig(reading_dim=(text.num_hidden_layers + 1) * text.hidden_size,
                                        evidence_dim=4, num_prototypes=3)).save_pretrained(tmp_path / "h")
    enc = UserEncoder(model, processor, UserEncoderConfig(pooling="preference_head", head=str(tmp_path / "h"), batch_size=3))
    pairs = _pairs(5, n=6)
    arrays = PairArrays(np.stack([c for _, c, _ in pairs]), np.stack([r for _, _, r in pairs]), [p for p, _, _ in pairs],
                        ["a"] * 6, np.ones(6, np.float32), np.arange(6))
    chunks = [FewShotChunk("a", (0, 1, 2), 0), FewShotChunk("a", (2, 3, 5), 1), FewShotChunk("a", (4,), 2)]
    got = head_chunk_embeddings(enc, chunks, arrays, progress=False)
    for c in chunks:
        want = enc.encode_one(arrays.pairs(c.indices))
        assert torch.allclose(got[f"a/{c.chunk}"], want, atol=1e-5)
