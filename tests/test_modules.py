import math

import pytest
import torch
from torch import nn

from lightning_ssl.modules.backbones import ResNet, SmallCNN, TimmBackbone, feature_dim
from lightning_ssl.modules.heads import ProjectionHead
from lightning_ssl.optim import WarmupCosineLR, param_groups, warmup_cosine


@pytest.mark.parametrize("channels", [1, 3])
def test_small_cnn_and_resnet_shapes(channels):
    x = torch.randn(2, channels, 32, 32)
    cnn = SmallCNN(channels, 32, width=8)
    assert cnn(x).shape == (2, cnn.num_features) == (2, 32)
    r = ResNet("resnet18", in_channels=channels, image_size=32)
    assert isinstance(r.net.maxpool, nn.Identity)
    assert r.net.conv1.kernel_size == (3, 3)
    assert r(x).shape == (2, 512)
    big = ResNet("resnet18", in_channels=channels, image_size=224)
    assert big.net.conv1.kernel_size == (7, 7)
    assert big.net.conv1.in_channels == channels


def test_small_cnn_grid_pooling_keeps_the_layout():
    """pool=2: the 2x2 cells of the last feature map, concatenated; pool=1 is their mean."""
    torch.manual_seed(0)
    cnn = SmallCNN(1, 28, width=4, stages=2, pool=2).eval()
    x = torch.rand(3, 1, 28, 28)
    f = cnn(x)
    assert f.shape == (3, cnn.num_features) == (3, 8 * 4)
    cells = nn.functional.adaptive_avg_pool2d(cnn.features(x), 2)  # (B, C, 2, 2)
    torch.testing.assert_close(f, cells.flatten(1))
    glob = SmallCNN(1, 28, width=4, stages=2).eval()  # same weights, global pool: the mean of the 4 cells (14x14 map)
    glob.load_state_dict(cnn.state_dict())
    torch.testing.assert_close(glob(x), cells.mean((2, 3)))
    with pytest.raises(ValueError, match="pool must be"):
        SmallCNN(1, 28, pool=0)


def test_resnet_rejects_unknown_arch():
    with pytest.raises(ValueError, match="unknown ResNet"):
        ResNet("vgg11")


def test_resnet_loads_local_weights(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), tmp_path / "r18.pt")
    r = ResNet("resnet18", image_size=224, weights=str(tmp_path / "r18.pt"))
    torch.testing.assert_close(r.net.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)


def test_timm_backbone_vit_small_input_and_checkpoint(tmp_path):
    vit = TimmBackbone("vit_tiny_patch16_224", in_channels=1, image_size=28, model_kwargs={"patch_size": 4, "depth": 2})
    assert vit(torch.randn(2, 1, 28, 28)).shape == (2, vit.num_features) == (2, 192)
    torch.save(vit.model.state_dict(), tmp_path / "vit.pt")
    again = TimmBackbone(
        "vit_tiny_patch16_224",
        in_channels=1,
        image_size=28,
        checkpoint_path=str(tmp_path / "vit.pt"),
        model_kwargs={"patch_size": 4, "depth": 2},
    )
    x = torch.randn(2, 1, 28, 28)
    vit.eval(), again.eval()
    torch.testing.assert_close(vit(x), again(x))
    with pytest.raises(ValueError, match="does not fit"):
        TimmBackbone("resnet18", checkpoint_path=str(tmp_path / "vit.pt"))


def test_feature_dim_without_attribute():
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert feature_dim(net, 3, 16) == 5


def test_projection_head_layouts():
    h = ProjectionHead(16, 32, 8, num_layers=3, batch_norm=True, last_batch_norm=True)
    kinds = [type(m).__name__ for m in h]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert h[0].bias is None
    assert h[6].bias is None
    assert not h[7].affine
    h2 = ProjectionHead(16, 32, 8, num_layers=2, batch_norm=False)
    assert [type(m).__name__ for m in h2] == ["Linear", "ReLU", "Linear"]
    assert h2[0].bias is not None
    assert h(torch.randn(4, 16)).shape == (4, 8)


def test_warmup_cosine_values():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)
    mid = 10 + 45 / 2
    assert warmup_cosine(int(mid), 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 90)))


def test_warmup_cosine_scheduler_learns_total_and_resumes():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = WarmupCosineLR(opt, warmup_steps=0.1)
    assert s.total_steps is None
    s.set_total_steps(100)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # step 0 of a 10-step warmup
    for _ in range(55):
        opt.step(), s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    state = s.state_dict()
    opt2 = torch.optim.SGD([p], lr=1.0)
    s2 = WarmupCosineLR(opt2, warmup_steps=0.1, total_steps=100)
    s2.load_state_dict(state)
    opt2.step(), s2.step(), opt.step(), s.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_param_groups_exclude_norm_and_bias_from_decay():
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    m[1].weight.requires_grad_(False)
    decay, no_decay = param_groups(m)
    assert [p.shape for p in decay["params"]] == [(4, 4)]
    assert len(no_decay["params"]) == 2
    assert no_decay["weight_decay"] == 0.0


# --- queues (MoCo, NNCLR, SwAV) ----------------------------------------------------------------------------------
def test_enqueue_wraps_around_and_rejects_overfull_batches():
    from lightning_ssl.modules.queue import check_queue_size, enqueue

    queue, ptr = torch.zeros(5, 2), torch.zeros((), dtype=torch.long)
    for value, n in ((1.0, 2), (2.0, 2), (3.0, 3)):  # 2 + 2 + 3 rows into 5: the last batch wraps to rows 4, 0, 1
        enqueue(queue, ptr, torch.full((n, 2), value))
    assert queue[:, 0].tolist() == [3, 3, 2, 2, 3]
    assert int(ptr) == 2
    with pytest.raises(ValueError, match="6 keys do not fit in a queue of 5"):
        enqueue(queue, ptr, torch.zeros(6, 2))
    check_queue_size("X", 16, 8, 2)
    with pytest.raises(ValueError, match=r"X queue_size=15 is smaller than the global batch \(8 x 2 processes\)"):
        check_queue_size("X", 15, 8, 2)


# --- differentiable all-reduce ------------------------------------------------------------------------------------
def _standardized_loss(x, w, reduce):
    """A loss of global batch statistics: standardize x @ w with the batch mean and variance, then a cross term."""
    z = x @ w
    n = reduce(torch.tensor(float(len(z))))
    mean = reduce(z.sum(0)) / n
    var = reduce((z - mean).pow(2).sum(0)) / n
    zn = (z - mean) / (var + 1e-5).sqrt()
    c = reduce(zn.T @ zn.roll(1, dims=1)) / n
    return c.pow(2).sum() + c.diagonal().sum()


def _ddp_all_reduce_sum(rank, world_size, x, weight, with_grad):
    import torch.distributed as dist

    from lightning_ssl.modules.distributed import all_reduce_sum

    n = len(x) // world_size
    w = weight.clone().requires_grad_(True)
    if with_grad:
        reduce = all_reduce_sum
    else:  # what an in-place dist.all_reduce does: the summed value, the gradient of the local summand only

        def reduce(t):
            return t + (all_reduce_sum(t, with_grad=False) - t).detach()

    loss = _standardized_loss(x[rank * n : (rank + 1) * n], w, reduce)
    loss.backward()
    dist.all_reduce(w.grad)  # what DDP does to parameter gradients: average over processes
    return loss.item(), w.grad / world_size


def test_all_reduce_sum_gives_the_global_loss_and_its_gradient():
    from tests.helpers import run_distributed

    x, weight = torch.randn(8, 5), torch.randn(5, 3)
    w = weight.clone().requires_grad_(True)
    full = _standardized_loss(x, w, lambda t: t)
    full.backward()
    for loss, grad in run_distributed(_ddp_all_reduce_sum, x, weight, True):
        assert loss == pytest.approx(full.item(), rel=1e-5)
        torch.testing.assert_close(grad, w.grad, rtol=1e-4, atol=1e-6)
    # an all-reduce without a backward gives the right loss but not its gradient
    for loss, grad in run_distributed(_ddp_all_reduce_sum, x, weight, False):
        assert loss == pytest.approx(full.item(), rel=1e-5)
        assert not torch.allclose(grad, w.grad, rtol=1e-2)
