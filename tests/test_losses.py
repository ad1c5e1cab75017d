"""Preference losses: values computed by hand, sign conventions, gradients, soft labels, targets."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from pixpref.errors import PixprefError
from pixpref.personalize.losses import (
    LOSSES,
    dpo_loss,
    get_loss,
    per_sample_mse,
    split_pairs,
    target_for,
)


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_per_sample_mse_and_split_by_hand():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 2.0]]])  # (2, 2, 2)
    target = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])
    assert torch.allclose(per_sample_mse(pred, target), torch.tensor([(1 + 4 + 9 + 16) / 4, (1 + 4) / 4]))
    w, l_ = split_pairs(torch.arange(6))
    assert w.tolist() == [0, 1, 2] and l_.tolist() == [3, 4, 5]
    with pytest.raises(PixprefError, match="even"):
        split_pairs(torch.arange(5))
    with pytest.raises(PixprefError, match="shape"):
        per_sample_mse(pred, target[:1])


def test_dpo_hand_computed_value_and_metrics():
    beta = 10.0
    # pair 1: model 0.1 / 0.3, ref 0.2 / 0.25 -> inside = -5 * ((0.1 - 0.3) - (0.2 - 0.25)) = 0.75
    # pair 2: model 0.4 / 0.2, ref 0.3 / 0.3 -> inside = -5 * ((0.4 - 0.2) - 0.0) = -1.0
    loss, m = dpo_loss(t(0.1, 0.4), t(0.3, 0.2), t(0.2, 0.3), t(0.25, 0.3), beta=beta)
    expected = -(logsigmoid(0.75) + logsigmoid(-1.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert m["implicit_acc"].item() == pytest.approx(0.5)
    assert m["mse_w"].item() == pytest.approx(0.25) and m["mse_l"].item() == pytest.approx(0.25)
    assert m["reward_margin"].item() == pytest.approx((0.75 - 1.0) / 2)
    # reward_w = -beta/2 (model_w - ref_w): pair 1: -5 * (0.1 - 0.2) = 0.5; pair 2: -5 * (0.4 - 0.3) = -0.5
    assert m["reward_w"].item() == pytest.approx(0.0, abs=1e-12)
    assert all(v.ndim == 0 and not v.requires_grad for v in m.values())


def test_sign_convention_policy_better_on_winner():
    # policy improved on the winner relative to the reference, unchanged on the loser
    loss, m = dpo_loss(t(0.10, 0.20), t(0.30, 0.30), t(0.12, 0.21), t(0.30, 0.30), beta=100.0)
    assert loss.item() < math.log(2)
    assert m["implicit_acc"].item() == 1.0
    # identical policy and reference: log 2 exactly, ties count one half
    loss, m = dpo_loss(t(0.1), t(0.3), t(0.1), t(0.3), beta=100.0)
    assert loss.item() == pytest.approx(math.log(2))
    assert m["implicit_acc"].item() == 0.5


def test_gradient_direction_and_reference_gets_none():
    mw, ml = t(0.2, 0.3).requires_grad_(), t(0.25, 0.1).requires_grad_()
    rw, rl = t(0.2, 0.3).requires_grad_(), t(0.25, 0.1).requires_grad_()
    loss, _ = dpo_loss(mw, ml, rw, rl, beta=50.0)
    loss.backward()
    assert (mw.grad > 0).all()  # lowering the winner's error lowers the loss
    assert (ml.grad < 0).all()  # raising the loser's error lowers the loss
    assert rw.grad is None and rl.grad is None  # the reference is constant
    # at policy == reference: d loss / d err_w = beta/2 * sigmoid(-0) / B = beta / 4 / B
    assert mw.grad[0].item() == pytest.approx(50.0 / 4 / 2)


def test_soft_labels():
    mw, ml, rw, rl, beta = t(0.1, 0.5), t(0.3, 0.2), t(0.2, 0.4), t(0.25, 0.25), 20.0
    x1 = -10.0 * ((0.1 - 0.3) - (0.2 - 0.25))  # 1.5
    x2 = -10.0 * ((0.5 - 0.2) - (0.4 - 0.25))  # -1.5
    hard, _ = dpo_loss(mw, ml, rw, rl, beta=beta)
    ones, _ = dpo_loss(mw, ml, rw, rl, beta=beta, label=t(1.0, 1.0))
    assert ones.item() == pytest.approx(hard.item())
    swapped, _ = dpo_loss(ml, mw, rl, rw, beta=beta)
    zeros, _ = dpo_loss(mw, ml, rw, rl, beta=beta, label=t(0.0, 0.0))
    assert zeros.item() == pytest.approx(swapped.item())
    tie, m = dpo_loss(mw, ml, rw, rl, beta=beta, label=t(0.5, 0.5))
    tie_swapped, _ = dpo_loss(ml, mw, rl, rw, beta=beta, label=t(0.5, 0.5))
    expected = -sum(0.5 * logsigmoid(x) + 0.5 * logsigmoid(-x) for x in (x1, x2)) / 2
    assert tie.item() == pytest.approx(expected) and tie_swapped.item() == pytest.approx(expected)
    assert m["implicit_acc"].item() == pytest.approx(0.5)
    mixed, _ = dpo_loss(mw, ml, rw, rl, beta=beta, label=t(0.8, 0.3))
    expected = (
        -((0.8 * logsigmoid(x1) + 0.2 * logsigmoid(-x1)) + (0.3 * logsigmoid(x2) + 0.7 * logsigmoid(-x2))) / 2
    )
    assert mixed.item() == pytest.approx(expected)
    with pytest.raises(PixprefError, match=r"\[0, 1\]"):
        dpo_loss(mw, ml, rw, rl, beta=beta, label=t(1.5, 0.0))


def test_registry_inpo_and_sft():
    with pytest.raises(PixprefError) as err:
        get_loss("ipo")
    assert "dpo, inpo, sft" in str(err.value)
    dpo, inpo, sft = get_loss("dpo"), get_loss("inpo"), get_loss("sft")
    assert set(LOSSES) == {"dpo", "inpo", "sft"}
    assert inpo.noising == "ddim_inversion" and dpo.noising == "forward"
    assert dpo.needs_reference and inpo.needs_reference and not sft.needs_reference
    assert inpo.default_beta != dpo.default_beta and inpo.default_beta > 0
    args = (t(0.1), t(0.3), t(0.2), t(0.25))
    # same math; registered default beta used when none is given
    x = -inpo.default_beta / 2 * ((0.1 - 0.3) - (0.2 - 0.25))
    assert inpo(*args)[0].item() == pytest.approx(-logsigmoid(x))
    assert inpo(*args, beta=10.0)[0].item() == pytest.approx(dpo(*args, beta=10.0)[0].item())
    with pytest.raises(PixprefError, match="beta"):
        dpo(*args, beta=0.0)
    with pytest.raises(PixprefError, match="missing"):
        dpo(t(0.1), t(0.3))
    loss, m = sft(t(0.1, 0.3, 0.5), t(9.0, 9.0, 9.0))
    assert loss.item() == pytest.approx(0.3) and m["mse_w"].item() == pytest.approx(0.3)


def test_target_for_prediction_types():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    steps = torch.tensor([10, 700])
    assert torch.equal(target_for("epsilon", sched, x0, noise, steps), noise)
    assert torch.equal(target_for("sample", sched, x0, noise, steps), x0)
    v = target_for("v_prediction", sched, x0, noise, steps)
    assert torch.allclose(v, sched.get_velocity(x0, noise, steps))
    abar = sched.alphas_cumprod[steps].view(-1, 1, 1, 1)
    assert torch.allclose(v, abar.sqrt() * noise - (1 - abar).sqrt() * x0, atol=1e-6)
    with pytest.raises(PixprefError, match="epsilon, sample, v_prediction"):
        target_for("flow", sched, x0, noise, steps)
