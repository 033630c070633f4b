import math

import pytest
import torch
import torch.nn.functional as F

from lightning_ssl.losses import InfoNCELoss, NTXentLoss, info_nce_loss, nt_xent_loss
from tests.helpers import run_distributed


def reference_nt_xent(z1, z2, t):
    """SimCLR eq. (1) written out with loops: l(i,j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t)."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denom)
    return total / (2 * n)


def test_nt_xent_hand_computed():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # every view: positive similarity 1, two negatives with similarity 0 -> -log(e / (e + 2))
    assert nt_xent_loss(z, z.clone(), temperature=1.0).item() == pytest.approx(math.log(2 + math.e) - 1, abs=1e-6)


@pytest.mark.parametrize("t", [0.07, 0.5, 1.0])
def test_nt_xent_matches_reference(t):
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    assert nt_xent_loss(z1, z2, t).item() == pytest.approx(reference_nt_xent(z1, z2, t), rel=1e-5)
    assert NTXentLoss(t)(z1, z2).item() == pytest.approx(reference_nt_xent(z1, z2, t), rel=1e-5)


def test_nt_xent_symmetric_and_scale_invariant():
    z1, z2 = torch.randn(8, 4), torch.randn(8, 4)
    assert nt_xent_loss(z1, z2).item() == pytest.approx(nt_xent_loss(z2, z1).item(), rel=1e-6)
    assert nt_xent_loss(3 * z1, z2).item() == pytest.approx(nt_xent_loss(z1, z2).item(), rel=1e-6)


def test_nt_xent_lower_for_aligned_views():
    z1 = torch.randn(16, 8)
    aligned = nt_xent_loss(z1, z1 + 0.01 * torch.randn(16, 8)).item()
    random = nt_xent_loss(z1, torch.randn(16, 8)).item()
    assert aligned < random - 1.0


def test_info_nce_hand_computed_and_queue():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # positive sim 1, one negative sim 0: -log(e / (e + 1))
    assert info_nce_loss(q, q.clone(), 1.0).item() == pytest.approx(math.log(1 + math.e) - 1, abs=1e-6)
    neg = torch.tensor([[1.0, 1.0]])  # cos = 1/sqrt(2) with both queries
    expected = -math.log(math.e / (math.e + 1 + math.exp(1 / math.sqrt(2))))
    assert InfoNCELoss(1.0)(q, q.clone(), neg).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("t", [0.0, -0.1])
def test_temperature_must_be_positive(t):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        NTXentLoss(t)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        nt_xent_loss(torch.randn(2, 3), torch.randn(2, 3), t)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        InfoNCELoss(t)


def test_loss_is_float32_under_bf16_autocast():
    z1, z2 = torch.randn(8, 4), torch.randn(8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = nt_xent_loss(z1.bfloat16(), z2.bfloat16(), 0.1)
    assert out.dtype == torch.float32


# --- real 2-process DDP (gloo): gathered negatives with gradients --------------------------------------------
def _ddp_loss_and_grad(rank, world_size, x1, x2, weight, loss_name):
    import torch.distributed as dist

    w = weight.clone().requires_grad_(True)
    n = x1.shape[0] // world_size
    sl = slice(rank * n, (rank + 1) * n)
    z1, z2 = x1[sl] @ w, x2[sl] @ w
    loss = nt_xent_loss(z1, z2, 0.2) if loss_name == "nt_xent" else info_nce_loss(z1, z2, 0.2)
    loss.backward()
    dist.all_reduce(w.grad)  # what DDP does to parameter gradients: average over processes
    w.grad /= world_size
    total = loss.detach().clone()
    dist.all_reduce(total)
    return (total / world_size).item(), w.grad.clone()


@pytest.mark.parametrize("loss_name", ["nt_xent", "info_nce"])
def test_gather_with_grad_ddp_equals_single_process(loss_name):
    x1, x2, weight = torch.randn(8, 6), torch.randn(8, 6), torch.randn(6, 4)
    w = weight.clone().requires_grad_(True)
    fn = nt_xent_loss if loss_name == "nt_xent" else info_nce_loss
    full = fn(x1 @ w, x2 @ w, 0.2)
    full.backward()
    results = run_distributed(_ddp_loss_and_grad, x1, x2, weight, loss_name)
    for loss, grad in results:
        assert loss == pytest.approx(full.item(), rel=1e-5)
        torch.testing.assert_close(grad, w.grad, rtol=1e-5, atol=1e-6)


def _ddp_without_gather(rank, world_size, x1, x2):
    n = x1.shape[0] // world_size
    sl = slice(rank * n, (rank + 1) * n)
    return nt_xent_loss(x1[sl], x2[sl], 0.2, gather_distributed=False).item()


def test_local_negatives_differ_from_global():
    """Guards the test above: without the gather, the per-process loss is a different (smaller-batch) loss."""
    x1, x2 = torch.randn(8, 6), torch.randn(8, 6)
    local = run_distributed(_ddp_without_gather, x1, x2)
    assert sum(local) / 2 != pytest.approx(nt_xent_loss(x1, x2, 0.2).item(), rel=1e-3)
