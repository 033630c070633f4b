"""AIM: the loss against the paper's formula and hand-computed values, the prefix-causal mask against the reference
code, what each position of the trunk sees, bidirectional features downstream, the attentive probe against the
reference code, bad settings refused. DDP equivalence (prefix lengths drawn for the whole batch):
tests/test_ddp_equivalence.py (``aim``)."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_ssl.losses import AIMLoss, aim_loss
from lightning_ssl.losses.mae import normalize_patches
from lightning_ssl.methods import AIM
from lightning_ssl.methods.aim import AttentivePooling
from lightning_ssl.modules.masking import patchify
from lightning_ssl.modules.prefix_vit import PrefixCausalViT, prefix_causal_mask, random_prefix_lengths
from lightning_ssl.modules.vit import ViT
from tests.test_mae import tiny_data, trainer


def trunk(**kw):
    kw = {"in_channels": 1, "image_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, **kw}
    return PrefixCausalViT(**kw)


def tiny_aim(**kw):
    return AIM(trunk(), **{"head_width": 32, "head_depth": 1, **kw})


# --- the loss -------------------------------------------------------------------------------------------------------
def paper_aim_loss(pred, patches, prefix, norm_pix):
    """El-Nouby et al. (2024), eqs. 2-3 with normalized pixel targets: for each image, with prefix length S,
    l = 1 / (K - S) sum_{k = S+1}^{K} ||x_hat_k - x_k||^2 (1-based k; here / P, the MSE over a patch's pixels), where
    x_hat_k is the output of position k - 1; the mean over the images. Written as a loop over images and patches."""
    total = 0.0
    for b in range(pred.shape[0]):
        s, k_total = int(prefix[b]), pred.shape[1]
        image = 0.0
        for k in range(s + 1, k_total + 1):  # 1-based patch index, as in the paper
            target = patches[b, k - 1].double()
            if norm_pix:
                target = (target - target.mean()) / math.sqrt(target.var().item() + 1e-6)
            image += ((pred[b, k - 2].double() - target) ** 2).mean().item()
        total += image / (k_total - s)
    return total / pred.shape[0]


@pytest.mark.parametrize("norm_pix", [True, False])
def test_aim_loss_matches_the_papers_formula(norm_pix):
    """apple/ml-aim publishes the models, not the training loss: the reference is the paper's equation."""
    pred, patches = torch.randn(4, 9, 6), torch.randn(4, 9, 6)
    prefix = torch.tensor([1, 4, 8, 5])
    expected = paper_aim_loss(pred, patches, prefix, norm_pix)
    assert aim_loss(pred, patches, prefix, norm_pix).item() == pytest.approx(expected, rel=1e-5)
    assert AIMLoss(norm_pix)(pred, patches, prefix).item() == pytest.approx(expected, rel=1e-5)


def test_aim_loss_hand_computed_and_prefix_predictions_do_not_count():
    # N = 3 patches of 2 pixels, prefix 1: patches 1 and 2 are predicted by positions 0 and 1
    patches = torch.tensor([[[9.0, 9.0], [1.0, 3.0], [0.0, 4.0]]])
    pred = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [7.0, 7.0]]])
    # errors ((1-1)^2 + (1-3)^2) / 2 = 2 and (0 + 16) / 2 = 8; mean over the 2 predicted patches = 5
    assert aim_loss(pred, patches, torch.tensor([1]), norm_pix=False).item() == pytest.approx(5.0)
    assert aim_loss(pred, patches, torch.tensor([2]), norm_pix=False).item() == pytest.approx(8.0)  # only patch 2
    pred2 = pred.clone()
    pred2[0, 0] = 100.0  # position 0 predicts a prefix patch when S = 2; the last position predicts nothing
    pred2[0, 2] = -50.0
    assert aim_loss(pred2, patches, torch.tensor([2]), norm_pix=False).item() == pytest.approx(8.0)
    # normalized targets: each patch to zero mean, unit (unbiased) variance
    norm = normalize_patches(patches)
    assert aim_loss(norm.roll(-1, 1), patches, torch.tensor([1])).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"prefix lengths must lie in \[1, N - 1\]"):
        aim_loss(pred, patches, torch.tensor([3]))


# --- the trunk ------------------------------------------------------------------------------------------------------
def reference_prefix_causal_mask(mask, num_patches):
    """``PrefixCausalAttention.forward`` of apple/ml-aim ``aim-v1/aim/v1/torch/layers.py``: ``mask`` (B, N) is True
    on the patches *outside* the prefix; the result (B, 1, N, N) is True where attention is allowed."""
    b, n = mask.shape[0], num_patches
    attn_mask = torch.ones(1, num_patches, num_patches, dtype=torch.bool).tril(diagonal=0)
    prefix_mask = (~mask).unsqueeze(1).expand(-1, n, -1).bool()
    attn_mask = attn_mask.clone().expand(b, -1, -1)
    attn_mask = torch.logical_or(attn_mask, prefix_mask)
    return attn_mask.unsqueeze(1)


def test_prefix_causal_mask_matches_ml_aim():
    prefix = torch.tensor([1, 3, 6, 5])
    ml_aim_mask = torch.arange(7)[None] >= prefix[:, None]  # ml-aim's argument: True beyond the prefix
    torch.testing.assert_close(prefix_causal_mask(prefix, 7), reference_prefix_causal_mask(ml_aim_mask, 7)[:, 0])
    lengths = random_prefix_lengths(1000, 16, generator=torch.Generator().manual_seed(0))
    assert set(lengths.tolist()) == set(range(1, 16))  # S ~ U{1, ..., N - 1}


def test_each_position_sees_the_prefix_and_the_patches_before_it_only():
    torch.manual_seed(0)
    net = trunk().eval()
    x = torch.randn(1, 1, 16, 16)
    prefix = torch.tensor([5])

    def changed(patch):  # new pixels in one patch (raster order, 4 x 4 grid): which positions' outputs move?
        y = x.clone()
        r, c = divmod(patch, 4)
        y[..., 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 1.0
        moved = (net.forward_tokens(y, prefix) - net.forward_tokens(x, prefix)).abs().amax(-1)[0] > 1e-5
        return moved.nonzero().flatten().tolist()

    assert changed(9) == list(range(9, 16))  # after the prefix: causal
    assert changed(2) == list(range(16))  # a prefix patch: every position sees it
    assert changed(4) == list(range(16))  # the last prefix patch too
    assert changed(15) == [15]
    # downstream the trunk is bidirectional: the first patch's token sees the last patch
    assert not torch.allclose(net.forward_tokens(x)[0, 0], net.forward_tokens(x + (torch.arange(256) >= 240).view(
        1, 1, 16, 16).float())[0, 0])  # fmt: skip


# --- the method -----------------------------------------------------------------------------------------------------
def test_training_step_embed_and_the_monitoring_inputs():
    torch.manual_seed(0)
    model = tiny_aim()
    x = torch.randn(4, 1, 16, 16)
    out = model.training_step(([x], torch.zeros(4)), 0)
    out["loss"].backward()
    assert out["embed_input"] is x  # the trunk attended prefix-causally; embed attends bidirectionally
    assert "features" not in out
    assert model.head.proj_out.weight.grad is not None
    assert model.backbone.patch_embed.proj.weight.grad is not None
    model.eval()
    torch.testing.assert_close(model.embed(x), model.backbone.forward_tokens(x).mean(1))
    assert model.embed_tokens(x).shape == (4, 16, 32)
    assert model.head.proj_out.out_features == 16  # 4 x 4 pixels, 1 channel


def test_trains_on_tiny_data(tmp_path):
    torch.manual_seed(0)
    model = tiny_aim(optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    start = model.backbone.blocks[0].attn.qkv.weight.detach().clone()
    t = trainer(tmp_path, max_epochs=2)
    t.fit(model, datamodule=tiny_data())
    assert torch.isfinite(t.callback_metrics["train/loss"])
    assert not torch.equal(start, model.backbone.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: AIM(ViT(in_channels=1, image_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2)), "prefix"),
        (lambda: tiny_aim(min_prefix=16), r"min_prefix must lie in \[1, N - 1\]"),
        (lambda: tiny_aim(head_width=0), "head_width"),
        (lambda: trunk(image_size=18), "not a multiple"),
        (lambda: trunk(embed_dim=30, num_heads=4), "divisible"),
    ],
)
def test_bad_settings_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_wrong_image_size_is_refused():
    with pytest.raises(ValueError, match="16 px images"):
        tiny_aim().embed(torch.randn(2, 1, 20, 20))


# --- the attentive probe --------------------------------------------------------------------------------------------
def reference_attention_pooling(x, pool):
    """``AttentionPoolingClassifier.forward`` of apple/ml-aim ``aim-v1/aim/v1/torch/layers.py`` with ``pool``'s
    weights (BatchNorm without affine, keys and values without bias, mean over the queries), attention written out."""
    b, n, c = x.shape
    h, q_count = pool.num_heads, pool.queries.shape[1]
    x = pool.bn(x.transpose(-2, -1)).transpose(-2, -1)
    q = pool.queries.expand(b, -1, -1).reshape(b, q_count, h, c // h).permute(0, 2, 1, 3)
    k = (x @ pool.k.weight.T).reshape(b, n, h, c // h).permute(0, 2, 1, 3)
    v = (x @ pool.v.weight.T).reshape(b, n, h, c // h).permute(0, 2, 1, 3)
    attn = (q @ k.transpose(-2, -1) / math.sqrt(c // h)).softmax(-1)
    x_cls = (attn @ v).transpose(1, 2).reshape(b, q_count, c).mean(dim=1)
    return pool.linear(x_cls)


def test_attentive_pooling_matches_ml_aim_and_learns_a_probe():
    torch.manual_seed(0)
    pool = AttentivePooling(16, num_classes=3, num_heads=4, num_queries=2).eval()
    x = torch.randn(5, 7, 16)
    torch.testing.assert_close(pool(x), reference_attention_pooling(x, pool))
    assert AttentivePooling(16, num_heads=4)(x).shape == (5, 16)  # no classifier: the pooled feature
    # on frozen tokens of a trained-from-scratch trunk, the probe fits a task that one token position carries
    model = tiny_aim().eval()
    images = torch.randn(64, 1, 16, 16)
    labels = (images[:, 0, 12:, 12:].mean((1, 2)) > 0).long()  # decided by the last patch only
    with torch.no_grad():
        tokens = model.embed_tokens(images)
    probe = AttentivePooling(32, num_classes=2, num_heads=2)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = F.cross_entropy(probe(tokens), labels)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    with pytest.raises(ValueError, match="divisible"):
        AttentivePooling(16, num_heads=3)


def test_patchify_order_is_raster():  # the autoregressive order: row by row, left to right
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert patchify(x, 2)[0, :, 0].tolist() == [0.0, 2.0, 8.0, 10.0]
