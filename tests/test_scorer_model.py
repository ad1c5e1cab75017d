"""ScorerModel: shapes, towers, masking, determinism, trainable parts, pairwise loss (tiny random open_clip)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pixpref.config import from_dict, read_yaml
from pixpref.errors import PixprefError
from pixpref.scorer.conditions import ALL_DIMENSIONS, CONDITION_WORDS, TEXT_DIMENSIONS
from pixpref.scorer.model import (
    ScorerConfig,
    ScorerModel,
    pairwise_accuracy,
    pairwise_loss,
    relevance,
    resolve_backbone,
)

REPO = Path(__file__).resolve().parent.parent
# three different widths (image 96, text 48, shared embedding 64): the towers' projections are exercised
TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 96, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 2},
}
PROMPTS = ["a red circle", "a photo of a blue square", "a star in green"]


@pytest.fixture(scope="module")
def clip_json(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    return str(path)


def make_model(clip_json: str, seed: int = 0, **overrides) -> ScorerModel:
    kwargs = dict(backbone=clip_json, user_dim=16, cross_layers=2, cross_heads=4, zero_init=False)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return ScorerModel.from_config(ScorerConfig(**kwargs)).eval()


@pytest.fixture(scope="module")
def model(clip_json: str) -> ScorerModel:
    return make_model(clip_json)


@pytest.fixture(scope="module")
def batch(model: ScorerModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    pixels = model.preprocess(torch.rand(3, 3, 32, 32, generator=g))
    ids = model.tokenize(PROMPTS)
    user = torch.randn(3, 5, 16, generator=g)
    return pixels, ids, user


def test_output_shapes_per_dimension(model, batch):
    pixels, ids, user = batch
    with torch.no_grad():
        out = model(pixels, ids, user=user)
    assert list(out) == list(ALL_DIMENSIONS)
    for scores in out.values():
        assert scores.shape == (3,) and torch.isfinite(scores).all()


def test_towers_match_open_clip(model, batch):
    pixels, ids, _ = batch
    with torch.no_grad():
        feats = model.encode(pixels, ids)
        assert feats["image"].shape == (3, 1 + (32 // 8) ** 2, 64)  # pooled + patches, embed width
        assert feats["prompt"].shape == (3, 32, 64)
        torch.testing.assert_close(feats["pooled"], model.clip.encode_text(ids))
        torch.testing.assert_close(feats["image"][:, 0], model.clip.encode_image(pixels))
    # valid prompt tokens: the words and EOS, no SOT, no padding ("a red circle" -> 3 words + EOS)
    assert feats["valid"][0].sum().item() == 4 and not feats["valid"][0, 0]


def test_zero_init_gives_the_clip_score(clip_json, batch):
    model = make_model(clip_json, zero_init=True)
    pixels, ids, user = batch
    with torch.no_grad():
        out = model(pixels, ids, user=user)
        img = torch.nn.functional.normalize(model.clip.encode_image(pixels), dim=-1)
        txt = torch.nn.functional.normalize(model.clip.encode_text(ids), dim=-1)
        clip_score = model.clip.logit_scale.exp() * (img * txt).sum(-1)
    for dim in ALL_DIMENSIONS:
        torch.testing.assert_close(out[dim], clip_score)


def test_dimensions_give_different_scores(model, batch):
    pixels, ids, user = batch
    with torch.no_grad():
        out = model(pixels, ids, user=user)
    for a in ALL_DIMENSIONS:
        for b in ALL_DIMENSIONS:
            if a < b:
                assert not torch.allclose(out[a], out[b], atol=1e-4), (a, b)


def test_eval_is_deterministic(model, batch):
    pixels, ids, user = batch
    with torch.no_grad():
        first = model(pixels, ids, user=user)
        second = model(pixels, ids, user=user)
    for dim in first:
        assert torch.equal(first[dim], second[dim])


def test_relevance_and_hard_mask_by_hand(model):
    # prompt tokens e1, e2, (e1+e2)/sqrt2, padding; the condition is e2 -> cosines 0, 1, 0.707
    prompt = torch.zeros(1, 4, 64)
    prompt[0, 0, 0] = 1.0
    prompt[0, 1, 1] = 1.0
    prompt[0, 2, :2] = 1.0
    prompt[0, 3, 5] = 1.0
    cond = torch.zeros(1, 2, 64)
    cond[0, 0, 1] = 2.0
    cond[0, 1, 0] = 5.0  # invalid condition token: must be ignored
    valid = torch.tensor([[True, True, True, False]])
    rel = relevance(prompt, valid, cond, torch.tensor([[True, False]]))
    torch.testing.assert_close(rel[0, :3], torch.tensor([0.0, 1.0, 1 / math.sqrt(2)]))
    assert rel[0, 3] == float("-inf")
    bias = model.prompt_bias(rel, valid, eos=torch.tensor([0]))  # token 0 plays EOS: always kept
    assert bias[0].tolist() == [0.0, 0.0, 0.0, float("-inf")]
    bias = model.prompt_bias(rel, valid, eos=torch.tensor([2]))
    assert bias[0].tolist() == [float("-inf"), 0.0, 0.0, float("-inf")]


def test_soft_mask_differs_from_hard(clip_json, batch):
    pixels, ids, _ = batch
    hard = make_model(clip_json, condition_in_context=False, dimensions=["alignment"])
    soft = make_model(clip_json, condition_in_context=False, dimensions=["alignment"], mask_mode="soft")
    with torch.no_grad():
        a, b = hard(pixels, ids)["alignment"], soft(pixels, ids)["alignment"]
    assert torch.isfinite(b).all() and not torch.allclose(a, b)


def test_personal_needs_user_and_follows_it(model, batch):
    pixels, ids, user = batch
    with pytest.raises(PixprefError, match="personal.*user"):
        model(pixels, ids, ["personal"])
    with pytest.raises(PixprefError, match=r"\(3, T, 16\)"):
        model(pixels, ids, ["personal"], user=torch.randn(3, 5, 8))
    with torch.no_grad():
        one = model(pixels, ids, ["personal", "overall"], user=user)
        two = model(pixels, ids, ["personal", "overall"], user=torch.randn(user.shape))
    assert not torch.allclose(one["personal"], two["personal"])
    assert torch.equal(one["overall"], two["overall"])


def test_unknown_dimension_lists_valid(model, batch):
    pixels, ids, _ = batch
    with pytest.raises(PixprefError, match="unknown dimension 'beauty'.*aesthetics.*personal"):
        model(pixels, ids, ["beauty"])


def test_frozen_backbone_gets_no_gradient(clip_json, batch):
    model = make_model(clip_json).train()
    pixels, ids, user = batch
    out = model(pixels[:2], ids[:2], user=user[:2])
    loss = sum(pairwise_loss(s[:1], s[1:], torch.tensor([1.0])) for s in out.values())
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.clip.parameters())
    head = [(n, p) for n, p in model.named_parameters() if not n.startswith("clip.")]
    assert head and all(p.requires_grad for _, p in head)
    no_grad = [n for n, p in head if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad, no_grad


def test_unfreeze_last_blocks(clip_json, batch):
    model = make_model(clip_json, unfreeze_last_blocks=1, dimensions=["overall"]).train()
    pixels, ids, _ = batch
    out = model(pixels[:2], ids[:2])["overall"]
    pairwise_loss(out[:1], out[1:], 0.0).backward()
    trainable = {n for n, p in model.clip.named_parameters() if p.requires_grad}
    assert any(n.startswith("visual.transformer.resblocks.1.") for n in trainable)
    assert any(n.startswith("transformer.resblocks.1.") for n in trainable)
    assert not any(".resblocks.0." in n for n in trainable)
    assert "visual.proj" in trainable and "text_projection" in trainable
    got = {n for n, p in model.clip.named_parameters() if p.grad is not None}
    assert "visual.transformer.resblocks.1.mlp.c_fc.weight" in got
    assert "transformer.resblocks.1.mlp.c_fc.weight" in got
    assert not any(".resblocks.0." in n for n in got)


def test_config_errors(clip_json):
    with pytest.raises(PixprefError, match="unknown dimension 'style'.*alignment"):
        ScorerConfig(backbone=clip_json, dimensions=["style"])
    with pytest.raises(PixprefError, match="user_dim"):
        ScorerConfig(backbone=clip_json, dimensions=["personal"], user_dim=0)
    with pytest.raises(PixprefError, match="cross_heads"):
        make_model(clip_json, cross_heads=5)
    with pytest.raises(PixprefError, match="unknown CLIP backbone 'nope'.*toy"):
        resolve_backbone("nope")
    with pytest.raises(PixprefError, match="unknown config key 'layers'.*cross_layers"):
        from_dict(ScorerConfig, {"layers": 2})


def test_long_conditions_fall_back_then_fail(clip_json):
    # "overall" joined with commas does not fit a 32-token context: the words are joined with spaces
    model = make_model(clip_json, dimensions=["overall"])
    ids = model.cond_ids_overall[0]
    assert 267 not in ids.tolist()  # the comma token
    spaced = model.tokenizer.encode(" ".join(CONDITION_WORDS["overall"]))
    assert ids.tolist()[1 : len(spaced) + 1] == spaced
    with pytest.raises(PixprefError, match="do not fit"):
        make_model(clip_json, dimensions=["detail"], conditions={"detail": ["word"] * 40})


def test_pairwise_loss_by_hand():
    def softplus(x: float) -> float:
        return math.log1p(math.exp(x))

    a = torch.tensor([0.0, 2.0, 3.0])
    b = torch.tensor([0.0, 0.0, 0.0])
    label = torch.tensor([1.0, 0.5, 0.0])
    # per pair: -[y log s(d) + (1 - y) log s(-d)] = y softplus(-d) + (1 - y) softplus(d)
    expected = (math.log(2) + 0.5 * (softplus(-2) + softplus(2)) + softplus(3)) / 3
    assert pairwise_loss(a, b, label).item() == pytest.approx(expected, rel=1e-6)
    assert pairwise_loss(a[:1], b[:1], 1.0).item() == pytest.approx(math.log(2), rel=1e-6)
    # ties pull the scores together: gradient of d at d = 2 with y = 0.5 is s(2) - 0.5 > 0
    d = torch.tensor([2.0], requires_grad=True)
    pairwise_loss(d, torch.zeros(1), 0.5).backward()
    assert d.grad.item() == pytest.approx(1 / (1 + math.exp(-2)) - 0.5, rel=1e-5)
    with pytest.raises(PixprefError, match=r"\[0, 1\]"):
        pairwise_loss(a, b, torch.tensor([1.5, 0.0, 1.0]))
    assert pairwise_accuracy(a, b, torch.tensor([1.0, 1.0, 0.0])) == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["toy", "vit_h_14"])
def test_shipped_configs_load(name):
    data = read_yaml(REPO / "configs" / "scorer" / f"{name}.yaml")
    config = from_dict(ScorerConfig, data["model"], prefix="model")
    assert set(config.dimensions) <= set(ALL_DIMENSIONS)
    assert set(TEXT_DIMENSIONS) <= set(config.dimensions)
    if name == "vit_h_14":  # resolves without building the 1B-parameter model
        cfg, _ = resolve_backbone(config.backbone)
        assert cfg["embed_dim"] % config.cross_heads == 0 and cfg["vision_cfg"]["patch_size"] == 14


def test_utility_dimensions_add_a_taste_term(clip_json, batch):
    """utility_dimensions: attention score + w . phi(image) / sqrt(D), w from the condition's mean token."""
    pixels, ids, user = batch
    att = make_model(clip_json, seed=3)
    uti = make_model(clip_json, seed=3, utility_dimensions=["personal", "detail"])
    torch.manual_seed(4)
    for p in uti.image_features[-1].parameters():  # leave zero init, so the term is not trivially zero
        torch.nn.init.normal_(p, std=0.5)
    with torch.no_grad():
        a, u = att(pixels, ids, user=user), uti(pixels, ids, user=user)
        phi = uti.image_features(uti.clip.encode_image(pixels))
        w_user = uti.user_taste(uti.user_proj(uti.user_norm(user)).mean(1))
        cond, valid = uti.condition_tokens("detail", 3, None)
        w_detail = uti.condition_taste(cond[valid].view(3, -1, cond.shape[-1]).mean(1))
        torch.testing.assert_close(u["personal"], a["personal"] + (w_user * phi).sum(-1) / math.sqrt(uti.width))
        torch.testing.assert_close(u["detail"], a["detail"] + (w_detail * phi).sum(-1) / math.sqrt(uti.width))
    assert not torch.allclose(u["personal"], a["personal"], atol=1e-3)
    for dim in ("aesthetics", "alignment", "overall"):  # no utility term: unchanged
        torch.testing.assert_close(u[dim], a[dim])
    # with zero_init the utility terms start at zero: an untrained scorer is still the CLIP score
    z_att = make_model(clip_json, zero_init=True)
    z_uti = make_model(clip_json, zero_init=True, utility_dimensions=list(ALL_DIMENSIONS))
    with torch.no_grad():
        za, zu = z_att(pixels, ids, user=user), z_uti(pixels, ids, user=user)
    for dim in ALL_DIMENSIONS:
        torch.testing.assert_close(zu[dim], za[dim])
    with pytest.raises(PixprefError, match="unknown utility dimension 'beauty'.*aesthetics.*personal"):
        ScorerConfig(backbone=clip_json, user_dim=16, utility_dimensions=["beauty"])
