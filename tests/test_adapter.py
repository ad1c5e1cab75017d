"""User cross-attention adapter on tiny SD-1.5-shaped and SDXL-shaped random UNets."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from tiny import make_unet

from pixpref.errors import PixprefError
from pixpref.personalize.adapter import (
    IgnoreUserKwargs,
    UserAdapter,
    UserAdapterConfig,
    UserAttnProcessor,
    cross_attention_layers,
    drop_user_tokens,
)

EMBED_DIM, NUM_TOKENS, BATCH = 24, 5, 3


def make_inputs(unet, kind: str, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    width = unet.config.cross_attention_dim
    inputs = {
        "sample": torch.randn(BATCH, 4, 8, 8, generator=g),
        "timestep": torch.tensor([3, 400, 999]),
        "encoder_hidden_states": torch.randn(BATCH, 7, width, generator=g),
    }
    if kind == "sdxl":
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(BATCH, 32, generator=g),
            "time_ids": torch.randn(BATCH, 6, generator=g),
        }
    embedding = torch.randn(BATCH, NUM_TOKENS, EMBED_DIM, generator=g)  # a different user per sample
    return inputs, embedding


def run(unet, inputs, **cross_attention_kwargs):
    return unet(**inputs, cross_attention_kwargs=cross_attention_kwargs or None).sample


def randomise(adapter: UserAdapter) -> None:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def case(request):
    unet = make_unet(request.param)
    inputs, embedding = make_inputs(unet, request.param)
    base = run(unet, inputs)
    return request.param, unet, inputs, embedding, base


@pytest.mark.parametrize("init", ["zero", "copy"])
def test_fresh_adapter_is_exactly_the_base_model(case, init):
    kind, unet, inputs, embedding, base = case
    adapter = UserAdapter(UserAdapterConfig(embed_dim=EMBED_DIM, num_tokens=NUM_TOKENS, init=init), unet)
    adapter.install(unet)
    try:
        assert len(adapter.config.layers) == len(cross_attention_layers(unet)) > 0
        tokens = adapter.encode(embedding)
        assert tokens.shape == (BATCH, NUM_TOKENS, unet.config.cross_attention_dim)
        assert torch.equal(run(unet, inputs, **adapter.attention_kwargs(tokens)), base)
    finally:
        adapter.remove(unet)
    assert torch.equal(run(unet, inputs), base)


def test_trained_adapter_changes_output_and_every_off_switch_is_exact(case):
    kind, unet, inputs, embedding, base = case
    adapter = UserAdapter(UserAdapterConfig(embed_dim=EMBED_DIM, num_tokens=NUM_TOKENS), unet)
    randomise(adapter)
    adapter.install(unet)
    try:
        tokens = adapter.encode(embedding)
        with torch.no_grad():
            full = run(unet, inputs, **adapter.attention_kwargs(tokens))
            for i in range(BATCH):  # every sample moved by its own user
                assert not torch.allclose(full[i], base[i], atol=1e-4)
            assert torch.equal(run(unet, inputs, **adapter.attention_kwargs(tokens, scale=0.0)), base)
            assert torch.equal(run(unet, inputs, **adapter.attention_kwargs(None)), base)
            assert torch.equal(run(unet, inputs), base)
            half = run(unet, inputs, **adapter.attention_kwargs(tokens, scale=0.5))
            assert not torch.allclose(half, full, atol=1e-4)
            adapter.set_scale(0.0)  # default scale 0: off, unless a call asks otherwise
            assert torch.equal(run(unet, inputs, **adapter.attention_kwargs(tokens)), base)
            assert torch.allclose(run(unet, inputs, **adapter.attention_kwargs(tokens, scale=1.0)), full)
            adapter.set_scale(1.0)

            keep = torch.tensor([True, False, True])
            masked = run(unet, inputs, **adapter.attention_kwargs(tokens, mask=keep))
            assert torch.equal(masked[1], base[1])  # the dropped sample is the base model
            assert torch.allclose(masked[0], full[0], atol=1e-5) and torch.allclose(
                masked[2], full[2], atol=1e-5
            )
            dropped = run(
                unet, inputs, **adapter.attention_kwargs(tokens, mask=torch.zeros(BATCH, dtype=torch.bool))
            )
            assert torch.equal(dropped, base)

            # per-sample users: one sample alone gives the same output as inside the batch
            one = {
                k: (v[1:2] if torch.is_tensor(v) else {kk: vv[1:2] for kk, vv in v.items()})
                for k, v in inputs.items()
            }
            alone = run(unet, one, **adapter.attention_kwargs(tokens[1:2]))
            assert torch.allclose(alone[0], full[1], atol=1e-5)
    finally:
        adapter.remove(unet)


@pytest.mark.parametrize("init", ["zero", "copy"])
def test_gradients_reach_only_the_adapter(case, init):
    kind, unet, inputs, embedding, _ = case
    adapter = UserAdapter(UserAdapterConfig(embed_dim=EMBED_DIM, num_tokens=NUM_TOKENS, init=init), unet)
    adapter.install(unet)
    try:
        # at init the adapter is a no-op but its first trainable factor already gets a gradient
        run(unet, inputs, **adapter.attention_kwargs(adapter.encode(embedding))).pow(2).mean().backward()
        for name, layer in adapter.layers.items():
            first = layer.gate if init == "copy" else layer.to_v_user.weight
            assert first.grad is not None and first.grad.abs().sum() > 0, name
        adapter.zero_grad(set_to_none=True)

        randomise(adapter)
        keep = torch.tensor([True, True, False])
        out = run(unet, inputs, **adapter.attention_kwargs(adapter.encode(embedding), mask=keep))
        out.pow(2).mean().backward()
        for name, p in adapter.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert all(p.grad is None for p in unet.parameters())
        assert not any(p.requires_grad for p in unet.parameters())
        assert {id(p) for p in adapter.parameters()}.isdisjoint({id(p) for p in unet.parameters()})
    finally:
        adapter.remove(unet)


def test_save_load_round_trip_and_mismatch_errors(case, tmp_path):
    kind, unet, inputs, embedding, _ = case
    config = UserAdapterConfig(
        embed_dim=EMBED_DIM, num_tokens=NUM_TOKENS, num_out_tokens=3, pos_embed=True, scale=0.7
    )
    adapter = UserAdapter(config, unet)
    randomise(adapter)
    adapter.save_pretrained(tmp_path / "ad")
    assert (tmp_path / "ad" / "user_adapter.safetensors").is_file()
    assert (tmp_path / "ad" / "adapter_config.json").is_file()
    loaded = UserAdapter.from_pretrained(tmp_path / "ad", unet)
    assert loaded.config == adapter.config
    with torch.no_grad():
        adapter.install(unet)
        tokens = adapter.encode(embedding)
        assert tokens.shape == (BATCH, 3, unet.config.cross_attention_dim)
        expected = run(unet, inputs, **adapter.attention_kwargs(tokens))
        adapter.remove(unet)
        loaded.install(unet)
        got = run(unet, inputs, **loaded.attention_kwargs(loaded.encode(embedding)))
        loaded.remove(unet)
    assert torch.equal(got, expected)

    from safetensors.torch import load_file

    adapter.save_pretrained(tmp_path / "half", dtype=torch.float16)  # shipping format
    assert all(
        v.dtype == torch.float16 for v in load_file(tmp_path / "half" / "user_adapter.safetensors").values()
    )
    half = UserAdapter.from_pretrained(tmp_path / "half", unet)
    assert all(p.dtype == torch.float32 for p in half.parameters())
    for (name, a), (_, b) in zip(adapter.state_dict().items(), half.state_dict().items()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), name

    other_width = make_unet(kind, cross_attention_dim=48)
    with pytest.raises(PixprefError, match="cross_attention_dim"):
        UserAdapter.from_pretrained(tmp_path / "ad", other_width)
    other_layers = make_unet(kind, layers_per_block=2)
    with pytest.raises(PixprefError, match="layers"):
        UserAdapter.from_pretrained(tmp_path / "ad", other_layers)
    with pytest.raises(PixprefError):
        adapter.install(other_layers)
    with pytest.raises(PixprefError, match="not found"):
        UserAdapter.from_pretrained(tmp_path / "missing", unet)


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_no_warning_spam_about_user_kwargs(case, recwarn):
    kind, unet, inputs, embedding, _ = case
    capture = _Capture()
    diffusers_logger = logging.getLogger("diffusers")  # diffusers' loggers do not propagate to root
    diffusers_logger.addHandler(capture)
    try:
        tokens = torch.randn(BATCH, NUM_TOKENS, unet.config.cross_attention_dim)
        with torch.no_grad():
            run(unet, inputs, user_tokens=tokens, user_scale=1.0)  # stock processors: they complain
        assert any("user_tokens" in m for m in capture.messages)  # the check below can fail
        capture.messages.clear()
        adapter = UserAdapter(UserAdapterConfig(embed_dim=EMBED_DIM, num_tokens=NUM_TOKENS), unet)
        adapter.install(unet)
        try:
            with torch.no_grad():
                keep = torch.tensor([True, False, True])
                run(unet, inputs, **adapter.attention_kwargs(adapter.encode(embedding), scale=0.8, mask=keep))
                run(unet, inputs, **adapter.attention_kwargs(None))
        finally:
            adapter.remove(unet)
    finally:
        diffusers_logger.removeHandler(capture)
    assert capture.messages == []
    assert not [w for w in recwarn if "cross_attention_kwargs" in str(w.message) or "user_" in str(w.message)]


def test_install_remove_and_input_checks():
    unet = make_unet("sd15")
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    adapter = UserAdapter(UserAdapterConfig(embed_dim=EMBED_DIM, num_tokens=NUM_TOKENS), unet)
    adapter.install(unet)
    kinds = {k: type(v) for k, v in unet.attn_processors.items()}
    assert all((v is UserAttnProcessor) == k.endswith("attn2.processor") for k, v in kinds.items())
    assert all(v is IgnoreUserKwargs for k, v in kinds.items() if k.endswith("attn1.processor"))
    with pytest.raises(PixprefError, match="already installed"):
        adapter.install(unet)
    inputs, embedding = make_inputs(unet, "sd15")
    with pytest.raises(PixprefError, match="user embedding"):
        adapter.encode(torch.randn(BATCH, NUM_TOKENS + 1, EMBED_DIM))
    with pytest.raises(PixprefError, match="user_tokens"):
        run(unet, inputs, **adapter.attention_kwargs(adapter.encode(embedding[:1])))
    adapter.remove(unet)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    with pytest.raises(PixprefError, match="not installed"):
        adapter.remove(unet)
    with pytest.raises(PixprefError, match="valid options: copy, zero"):
        UserAdapterConfig(embed_dim=4, num_tokens=2, init="ones")
    with pytest.raises(PixprefError, match="resolved layers"):
        UserAdapter(UserAdapterConfig(embed_dim=4, num_tokens=2))
    with pytest.raises(PixprefError, match="valid options"):
        adapter.install(unet, backend="flash")


def test_drop_user_tokens_masks_per_sample():
    tokens = torch.randn(1000, 2, 4)
    assert drop_user_tokens(tokens, 0.0).all()
    assert not drop_user_tokens(tokens, 1.0).any()
    a = drop_user_tokens(tokens, 0.3, torch.Generator().manual_seed(3))
    b = drop_user_tokens(tokens, 0.3, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.bool and a.shape == (1000,)
    assert 0.2 < 1 - a.float().mean().item() < 0.4
    with pytest.raises(PixprefError):
        drop_user_tokens(tokens, 1.5)


@pytest.mark.parametrize("mode", ["joint", "text"])
def test_guided_kwargs_put_the_user_in_the_halves_the_mode_says(case, mode):
    kind, unet, inputs, embedding, base = case
    adapter = UserAdapter(UserAdapterConfig(embed_dim=EMBED_DIM, num_tokens=NUM_TOKENS), unet)
    randomise(adapter)
    adapter.install(unet)
    try:
        tokens = adapter.encode(embedding)  # (B, T, C)
        doubled = {k: torch.cat([v, v]) for k, v in inputs.items() if torch.is_tensor(v)}
        if "added_cond_kwargs" in inputs:
            doubled["added_cond_kwargs"] = {k: torch.cat([v, v]) for k, v in inputs["added_cond_kwargs"].items()}
        with torch.no_grad():
            out = run(unet, doubled, **adapter.guided_kwargs(tokens, do_cfg=True, user_guidance=mode))
            personal = run(unet, inputs, **adapter.attention_kwargs(tokens))
            single = run(unet, inputs, **adapter.guided_kwargs(tokens, do_cfg=False, user_guidance=mode))
        uncond, cond = out.chunk(2)
        torch.testing.assert_close(cond, personal, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(single, personal, rtol=0, atol=0)
        if mode == "joint":  # the unconditional half is the base model: guidance amplifies the user
            torch.testing.assert_close(uncond, base, rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(uncond, personal, rtol=1e-5, atol=1e-5)
            assert (uncond - base).abs().max() > 1e-4
        with pytest.raises(PixprefError, match="joint, text"):
            adapter.guided_kwargs(tokens, do_cfg=True, user_guidance="both")
    finally:
        adapter.remove(unet)
