"""The user branch limited to a window of the denoising steps (UserAdapter.step_window)."""

import numpy as np
import pytest
import torch

from pixpref.errors import PixprefError
from pixpref.personalize.pipeline import PersonalizedSampler


@pytest.fixture(scope="module")
def sampler():
    return PersonalizedSampler.from_pretrained("toy", "dpo")


@pytest.fixture(scope="module")
def user(sampler):
    cfg = sampler.adapter.config
    return torch.randn(cfg.num_tokens, cfg.embed_dim, generator=torch.Generator().manual_seed(0)) * 3


def _images(sampler, user, **kw):
    return sampler("a red star", user=user, num_images=2, seed=3, num_inference_steps=6, **kw)


def test_a_window_with_no_step_is_the_base_model(sampler, user):
    base = _images(sampler, None)
    # 6 steps: start 0.9 -> only steps i >= 5.4 would use the user, i.e. none
    none = _images(sampler, user, user_start=0.9)
    np.testing.assert_array_equal(none, base)


def test_a_late_window_changes_less_than_the_full_one(sampler, user):
    base = _images(sampler, None)
    full = _images(sampler, user)
    late = _images(sampler, user, user_start=0.5)
    early = _images(sampler, user, user_end=0.5)
    assert not np.array_equal(late, base) and not np.array_equal(late, full)
    assert not np.array_equal(early, late)
    # the full window equals the default call exactly (no callback is installed)
    np.testing.assert_array_equal(_images(sampler, user, user_start=0.0, user_end=1.0), full)
    assert np.abs(late - base).mean() < np.abs(full - base).mean()


@pytest.mark.parametrize("start,end", [(-0.1, 1.0), (0.5, 0.5), (0.2, 1.5), (0.8, 0.3)])
def test_bad_windows_are_refused(sampler, user, start, end):
    with pytest.raises(PixprefError, match="user_start"):
        _images(sampler, user, user_start=start, user_end=end)


def test_the_callback_follows_the_window():
    from pixpref.personalize.adapter import UserAdapter

    kwargs = {"user_tokens": None, "user_scale": 0.7, "user_mask": None}
    callback = UserAdapter.step_window(kwargs, 10, 0.3, 0.8)
    seen = [kwargs["user_scale"]]
    for step in range(9):
        callback(None, step, None, {})
        seen.append(kwargs["user_scale"])
    assert seen == [0.0, 0.0, 0.0, 0.7, 0.7, 0.7, 0.7, 0.7, 0.0, 0.0]
    assert UserAdapter.step_window(kwargs, 10) is None


def test_the_adapter_carries_its_window(sampler, user, tmp_path):
    from pixpref.personalize.adapter import UserAdapter, UserAdapterConfig

    late = _images(sampler, user, user_start=0.5)
    sampler.adapter.config.start = 0.5
    try:
        np.testing.assert_array_equal(_images(sampler, user), late)  # the saved window is the default
        folder = sampler.adapter.save_pretrained(tmp_path / "ada")
        assert UserAdapter.from_pretrained(folder, sampler.pipe.unet).config.start == 0.5
    finally:
        sampler.adapter.config.start = 0.0
    with pytest.raises(PixprefError, match="start < end"):
        UserAdapterConfig(embed_dim=4, num_tokens=2, start=0.7, end=0.7)
