"""The optimizer recipe pieces: parameter groups (a learning rate of their own, LARS exclusions), LARS as solo-learn
and Barlow Twins configure it, I-JEPA's warm-up from a start LR, the cosine weight-decay schedule for any method."""

import math
from types import SimpleNamespace

import pytest
import torch
from timm.optim import Lars
from torch import nn

from lightning_ssl.callbacks import LinearLRScaling, ParamGroups, WeightDecaySchedule
from lightning_ssl.methods import DINO, BarlowTwins
from lightning_ssl.modules.backbones import SmallCNN
from lightning_ssl.modules.vit import ViT
from lightning_ssl.optim import WarmupCosineLR, cosine_weight_decay, param_groups, set_weight_decay, with_schedule


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_param_groups_mark_decay_lars_adaptation_and_a_group_lr():
    decayed, plain = param_groups(net(), no_decay_lr=0.0048)
    assert [tuple(p.shape) for p in decayed["params"]] == [(6, 4), (3, 6)]
    assert (decayed["decayed"], decayed["always_adapt"], "lr" in decayed) == (True, True, False)
    assert [tuple(p.shape) for p in plain["params"]] == [(6,), (6,), (6,), (3,)]
    assert (plain["decayed"], plain["always_adapt"], plain["weight_decay"], plain["lr"]) == (False, False, 0.0, 0.0048)


def solo_learn_lars_step(params, lr, weight_decay, eta, clip_lr, momentum=0.9):
    """One step of solo-learn's LARS (vturrisi/solo-learn solo/utils/lars.py) with exclude_bias_n_norm=True, from a
    zero momentum buffer: 1-D parameters get neither weight decay nor the trust ratio."""
    out = []
    for p in params:
        d_p = p.grad.clone()
        if p.ndim != 1:
            p_norm, g_norm = p.norm(), p.grad.norm()
            lars_lr = eta * p_norm / (g_norm + p_norm * weight_decay + 1e-8)
            if clip_lr:
                lars_lr = min(lars_lr / lr, 1)
            d_p = (d_p + weight_decay * p) * lars_lr
        out.append(p - lr * d_p)  # the first momentum buffer is the update itself
    return out


@pytest.mark.parametrize("lr", [0.3, 50.0])  # 50: the clip (min(ratio / lr, 1)) binds
def test_timm_lars_with_our_groups_is_solo_learns_lars(lr):
    torch.manual_seed(0)
    model = net()
    model(torch.randn(8, 4)).square().mean().backward()
    params = list(model.parameters())
    expected = solo_learn_lars_step(params, lr, 1e-4, 0.02, clip_lr=True)
    opt = Lars(param_groups(model), lr=lr, momentum=0.9, weight_decay=1e-4, trust_coeff=0.02, trust_clip=True)
    opt.step()
    for got, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_lars_adapts_the_weights_even_without_weight_decay():
    torch.manual_seed(0)
    model = net()
    model(torch.randn(8, 4)).square().mean().backward()
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    Lars(param_groups(model), lr=1.0, momentum=0.0, weight_decay=0.0, trust_coeff=0.02).step()
    w, g = before[0], grads[0]
    ratio = 0.02 * w.norm() / g.norm()  # trust ratio on the weight matrix, although its weight decay is 0
    torch.testing.assert_close(model[0].weight, w - ratio * g, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[0].bias, before[1] - grads[1])  # the bias: plain SGD


def trainer_stub(batch: int, processes: int = 1, steps: int = 100):
    return SimpleNamespace(
        datamodule=SimpleNamespace(batch_size=batch),
        world_size=processes,
        accumulate_grad_batches=1,
        estimated_stepping_batches=steps,
        global_step=0,
    )


def test_barlow_twins_lrs_per_group_scaled_with_the_batch():
    """facebookresearch/barlowtwins main.py: param_groups[0] (weights) lr = 0.2 x batch/256, param_groups[1]
    (biases and BN) 0.0048 x batch/256; 2048 images a step."""
    model = BarlowTwins(SmallCNN(3, 8, width=4, stages=1), 16, 16, optimizer=lambda p: Lars(p, lr=0.2))
    stub = trainer_stub(batch=256, processes=8)
    model.trainer = stub
    LinearLRScaling(base_batch_size=256).setup(stub, model, "fit")
    ParamGroups(no_decay_lr=0.0048).setup(stub, model, "fit")
    opt = model.configure_optimizers()["optimizer"]
    weights, biases = opt.param_groups
    assert weights["initial_lr"] == pytest.approx(0.2 * 8)
    assert biases["initial_lr"] == pytest.approx(0.0048 * 8)
    assert all(p.ndim == 1 for p in biases["params"])


def test_decay_bias_norm_puts_every_parameter_in_one_adapted_group():
    model = BarlowTwins(SmallCNN(3, 8, width=4, stages=1), 16, 16, optimizer=lambda p: Lars(p, lr=0.2))
    model.trainer = trainer_stub(batch=8)
    ParamGroups(decay_bias_norm=True).setup(model.trainer, model, "fit")
    groups = model.configure_optimizers()["optimizer"].param_groups
    assert len(groups) == 1
    assert groups[0]["always_adapt"]
    assert len(groups[0]["params"]) == len([p for p in model.parameters() if p.requires_grad])


def test_param_groups_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="no_decay_lr"):
        ParamGroups(no_decay_lr=-1.0)
    with pytest.raises(ValueError, match="merges it away"):
        ParamGroups(no_decay_lr=0.1, decay_bias_norm=True)


def test_warmup_from_a_start_lr_as_ijepa():
    """facebookresearch/ijepa src/utils/schedulers.py WarmupCosineSchedule: start_lr + progress (ref_lr - start_lr)
    over the warm-up, then final_lr + (ref_lr - final_lr) (1 + cos(pi progress)) / 2."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = WarmupCosineLR(opt, warmup_steps=40, total_steps=300, min_lr_ratio=1e-3, warmup_start_ratio=0.2)
    lrs = []
    for _ in range(300):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()

    def reference(step):
        if step < 40:
            return 2e-4 + step / 40 * (1e-3 - 2e-4)
        progress = (step - 40) / (300 - 40)
        return 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * progress))

    assert lrs == pytest.approx([reference(s) for s in range(300)], rel=1e-6)


def test_cosine_weight_decay_as_ijepa_and_dino():
    """I-JEPA's CosineWDSchedule / DINO's cosine_scheduler: 0.04 at the first step, 0.4 at the last."""
    total = 101
    values = [cosine_weight_decay(s, total, 0.04, 0.4) for s in range(total)]
    assert values[0] == pytest.approx(0.04)
    assert values[-1] == pytest.approx(0.4)
    assert values[50] == pytest.approx(0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_set_weight_decay_leaves_biases_and_norms_at_zero():
    opt = torch.optim.AdamW(param_groups(net()), weight_decay=0.04)
    set_weight_decay(opt, 0.3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0]


def test_weight_decay_schedule_callback_follows_the_optimizer_steps():
    opt = torch.optim.AdamW(param_groups(net()), weight_decay=0.04)
    logged = []
    module = SimpleNamespace(log=lambda name, value: logged.append(value))
    callback = WeightDecaySchedule(end=0.4)
    seen = []
    for step in range(11):
        callback.on_before_optimizer_step(SimpleNamespace(global_step=step, estimated_stepping_batches=11), module, opt)
        seen.append(opt.param_groups[0]["weight_decay"])
        assert opt.param_groups[1]["weight_decay"] == 0.0
    assert seen == pytest.approx([cosine_weight_decay(s, 11, 0.04, 0.4) for s in range(11)])
    assert logged == seen


def test_weight_decay_schedule_refuses_a_method_with_its_own():
    dino = DINO(
        ViT(1, 16, 4, 16, 1, 2),
        hidden_dim=16,
        bottleneck_dim=8,
        out_dim=32,
        weight_decay_end=0.4,
    )
    with pytest.raises(ValueError, match="schedules its weight decay itself"):
        WeightDecaySchedule(end=0.4).setup(SimpleNamespace(), dino, "fit")
    WeightDecaySchedule(end=None).setup(SimpleNamespace(), dino, "fit")  # off: nothing to refuse


def test_a_schedule_over_an_endless_run_is_refused_by_name():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    endless = SimpleNamespace(estimated_stepping_batches=float("inf"))
    with pytest.raises(ValueError, match="has no end here"):
        with_schedule(opt, WarmupCosineLR, endless)
    out = with_schedule(opt, WarmupCosineLR, SimpleNamespace(estimated_stepping_batches=10))
    assert out["lr_scheduler"]["scheduler"].total_steps == 10
    assert with_schedule(opt, None, endless) is opt
