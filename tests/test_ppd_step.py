"""One preference-training step on tiny SD-1.5- and SDXL-shaped UNets, for dpo, inpo and sft."""

import pytest
import torch
from diffusers import DDPMScheduler
from tiny import make_unet, sdxl_added

from pixpref.personalize.adapter import UserAdapter, UserAdapterConfig
from pixpref.personalize.losses import get_loss
from pixpref.personalize.trainer import PairBatch, PersonalizedUNet, preference_loss

B, T_USER, D_USER = 2, 3, 16


def _setup(kind, init="zero"):
    unet = make_unet(kind)
    adapter = UserAdapter(UserAdapterConfig(embed_dim=D_USER, num_tokens=T_USER, init=init, pos_embed=True), unet)
    model = PersonalizedUNet(unet, adapter)
    g = torch.Generator().manual_seed(0)
    width = unet.config.cross_attention_dim
    batch = PairBatch(
        x0_w=torch.randn(B, 4, 8, 8, generator=g), x0_l=torch.randn(B, 4, 8, 8, generator=g),
        text=torch.randn(B, 5, width, generator=g), user=torch.randn(B, T_USER, D_USER, generator=g),
        label=torch.ones(B), added=sdxl_added(B, g) if kind == "sdxl" else None,
    )
    return model, batch


def _train_step(model, batch, loss_name, steps=1, prediction_type="epsilon", beta=50.0):
    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for step in range(steps):
        loss, metrics = preference_loss(model, batch, get_loss(loss_name), sched, torch.Generator().manual_seed(step),
                                        beta=beta, inversion_steps=3)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append((float(loss.detach()), metrics))
    return losses


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("loss_name", ["dpo", "inpo"])
def test_one_step_changes_every_trainable_and_no_frozen_param(kind, loss_name):
    model, batch = _setup(kind)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapter.") for n in trainable)
    # step 1 from the zero init only moves to_v_user (DPO's gradient vanishes elsewhere at policy == ref);
    # a second step moves every adapter weight
    (loss0, m0), _ = _train_step(model, batch, loss_name, steps=2)
    assert abs(loss0 - torch.log(torch.tensor(2.0)).item()) < 1e-5  # policy == reference at init
    assert float(m0["implicit_acc"]) == 0.5
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == (n in trainable), f"{n}: changed={changed}, trainable={n in trainable}"


def test_sft_step_and_v_prediction():
    model, batch = _setup("sd15")
    (loss0, m0), (loss1, _) = _train_step(model, batch, "sft", steps=2, prediction_type="v_prediction")
    assert loss0 > 0 and "mse_w" in m0
    (dpo0, _), = _train_step(model, batch, "dpo", steps=1, prediction_type="v_prediction")
    assert torch.isfinite(torch.tensor(dpo0))


def test_dpo_learns_to_prefer_winners():
    """A few steps on a fixed batch raise the implicit accuracy and lower the loss below log 2."""
    model, batch = _setup("sd15")
    history = _train_step(model, batch, "dpo", steps=12, beta=500.0)
    assert history[-1][0] < history[0][0] - 0.05
    assert float(history[-1][1]["implicit_acc"]) == 1.0


def test_user_dropout_one_gives_reference_loss():
    """With every user dropped, policy == reference exactly, so DPO's loss stays log 2."""
    model, batch = _setup("sd15")
    for p in model.adapter.parameters():
        torch.nn.init.normal_(p, std=0.2)
    sched = DDPMScheduler(num_train_timesteps=1000)
    loss, m = preference_loss(model, batch, get_loss("dpo"), sched, torch.Generator().manual_seed(0),
                              beta=50.0, user_dropout=1.0)
    assert abs(float(loss) - torch.log(torch.tensor(2.0)).item()) < 1e-6 and float(m["user_kept"]) == 0.0
    loss2, _ = preference_loss(model, batch, get_loss("dpo"), sched, torch.Generator().manual_seed(0), beta=50.0)
    assert abs(float(loss2) - float(loss)) > 1e-6


def test_inpo_inversion_model_reference_vs_policy():
    """inversion_model="reference" inverts with the adapter off: once the adapter is non-zero its x_t (and so the
    loss) differs from the policy's inversion; at the zero init both are the same; bad names are refused."""
    from pixpref.errors import PixprefError

    sched = DDPMScheduler(num_train_timesteps=1000)

    def loss_of(model, batch, which):
        return float(preference_loss(model, batch, get_loss("inpo"), sched, torch.Generator().manual_seed(0),
                                     beta=50.0, inversion_steps=3, inversion_model=which)[0])

    model, batch = _setup("sd15")
    assert loss_of(model, batch, "policy") == loss_of(model, batch, "reference")  # adapter is zero: same model
    with torch.no_grad():  # a trained-looking adapter: every weight moved off the init
        for p in model.adapter.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    assert loss_of(model, batch, "policy") != loss_of(model, batch, "reference")
    with pytest.raises(PixprefError, match="unknown inversion model 'base'.*policy.*reference"):
        loss_of(model, batch, "base")
