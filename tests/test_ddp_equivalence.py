"""Every method's training step in a real 2-process DDP group (gloo, CPU), each process holding half of the
batch, gives the same loss and the same parameter gradients as one process holding the whole batch.

BatchNorm is put in eval mode so the comparison is exact (per-process batch statistics are a property of
BatchNorm, not of the loss). A new method is covered by adding one entry to ``CASES``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lightning_ssl.methods import BYOL, MoCo, MoCoV3, SimCLR, SimSiam
from lightning_ssl.modules.backbones import SmallCNN
from tests.helpers import run_distributed

N, C, S = 8, 1, 16  # global batch, channels, image size


def cnn():
    return SmallCNN(in_channels=C, image_size=S, width=4)


def two_views(g: torch.Generator):
    return [torch.randn(N, C, S, S, generator=g), torch.randn(N, C, S, S, generator=g)], torch.arange(N) % 4


def classifier():
    from lightning_ssl.eval.finetune import Classifier

    return Classifier(cnn(), num_classes=4)


def one_view(g: torch.Generator):
    return [torch.randn(N, C, S, S, generator=g)], torch.arange(N) % 4


# name: (model factory, batch factory)
CASES = {
    "simclr": (lambda: SimCLR(cnn(), proj_hidden_dim=16, proj_dim=8), two_views),
    "moco": (lambda: MoCo(cnn(), proj_hidden_dim=16, proj_dim=8, queue_size=32), two_views),
    "moco_symmetric": (lambda: MoCo(cnn(), proj_hidden_dim=16, proj_dim=8, queue_size=32, symmetric=True), two_views),
    "mocov3": (lambda: MoCoV3(cnn(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16), two_views),
    "byol": (lambda: BYOL(cnn(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16), two_views),
    "simsiam": (lambda: SimSiam(cnn(), proj_dim=8, pred_hidden_dim=4), two_views),
    "classifier": (classifier, one_view),
}


class _Step(nn.Module):
    """What Lightning's DDP wrapper does: the wrapped module's forward is the training step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch):
        out = self.model.training_step(batch, 0)
        return out["loss"] if isinstance(out, dict) else out


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = CASES[name][0]()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def _batch(name: str):
    return CASES[name][1](torch.Generator().manual_seed(1))


def _slice(obj, sl):
    if isinstance(obj, torch.Tensor):
        return obj[sl]
    if isinstance(obj, (list, tuple)):
        return type(obj)(_slice(o, sl) for o in obj)
    return obj


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _ddp_step(rank: int, world_size: int, name: str):
    import warnings

    warnings.filterwarnings("ignore")
    model = _build(name)
    ddp = DistributedDataParallel(_Step(model), find_unused_parameters=True)
    n = N // world_size
    loss = ddp(_slice(_batch(name), slice(rank * n, (rank + 1) * n)))
    loss.backward()
    total = loss.detach().clone()
    torch.distributed.all_reduce(total)
    return (total / world_size).item(), _grads(model), {k: v.clone() for k, v in model.named_buffers()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ddp_matches_single_process(name):
    model = _build(name)
    loss = _Step(model)(_batch(name))
    loss.backward()
    ref_grads, ref_buffers = _grads(model), dict(model.named_buffers())
    assert ref_grads, "the method produced no gradients"
    for ddp_loss, grads, buffers in run_distributed(_ddp_step, name):
        assert ddp_loss == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
        assert grads.keys() == ref_grads.keys()
        for k in ref_grads:
            torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"grad of {k}: {m}")
        for k in ("queue", "queue_ptr", "center"):  # state every process must agree on
            if k in ref_buffers:
                torch.testing.assert_close(buffers[k], ref_buffers[k], msg=lambda m: f"{k}: {m}")
