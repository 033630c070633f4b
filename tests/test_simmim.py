"""SimMIM: the masks, the loss against hand-computed values and the reference code's formula, the mask token right
after the patch embedding / stem for our ViT and for timm Swin and ConvNeXt models (tiny ones built here, no
download). DDP equivalence (masks drawn for the whole batch): tests/test_ddp_equivalence.py."""

import pytest
import torch
import torch.nn.functional as F

from lightning_ssl.losses import simmim_loss
from lightning_ssl.methods import SimMIM
from lightning_ssl.methods.simmim import simmim_masks
from lightning_ssl.modules.backbones import SmallCNN, TimmBackbone
from lightning_ssl.modules.vit import ViT


def vit():
    return ViT(in_channels=1, image_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, pool="avg")


def swin():
    return TimmBackbone(
        "swin_tiny_patch4_window7_224",
        in_channels=1,
        image_size=16,
        model_kwargs=dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=2),
    )


def convnext():
    return TimmBackbone(
        "convnext_atto", in_channels=1, image_size=32, model_kwargs=dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1))
    )


def test_masks_have_the_same_count_of_aligned_squares():
    g = torch.Generator().manual_seed(0)
    mask = simmim_masks(5, (8, 8), mask_patch=2, mask_ratio=0.6, generator=g)  # 4x4 squares of 2x2, ceil(9.6) = 10
    assert mask.shape == (5, 8, 8)
    assert mask.dtype == torch.bool
    assert mask.flatten(1).sum(1).tolist() == [40] * 5
    coarse = mask[:, ::2, ::2]
    torch.testing.assert_close(coarse.repeat_interleave(2, 1).repeat_interleave(2, 2), mask)  # whole squares
    again = simmim_masks(5, (8, 8), 2, 0.6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, mask)


def test_loss_hand_computed_and_matches_reference():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    target = torch.zeros(1, 1, 2, 2)
    mask = torch.tensor([[[1, 0], [0, 1]]])
    assert simmim_loss(pred, target, mask).item() == pytest.approx((1 + 4) / 2)
    # reference (SimMIM models/simmim.py): (l1 * mask).sum() / (mask.sum() + 1e-5) / in_chans
    torch.manual_seed(0)
    x, x_rec = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    m = (torch.rand(2, 8, 8) > 0.4).float()
    ref = (F.l1_loss(x, x_rec, reduction="none") * m.unsqueeze(1)).sum() / (m.sum() + 1e-5) / 3
    assert simmim_loss(x_rec, x, m).item() == pytest.approx(ref.item(), rel=1e-5)
    x_rec2 = torch.where(m.bool().unsqueeze(1), x_rec, x_rec + 10)  # visible pixels do not count
    assert simmim_loss(x_rec2, x, m).item() == pytest.approx(simmim_loss(x_rec, x, m).item(), rel=1e-6)


@pytest.mark.parametrize(
    ("make", "size", "stride"), [(vit, 16, 4), (swin, 16, 8), (convnext, 32, 32)], ids=["vit", "swin", "convnext"]
)
def test_masked_pixels_do_not_reach_the_encoder(make, size, stride):
    torch.manual_seed(0)
    model = SimMIM(make(), mask_patch_size=8).eval()
    assert model.stem_stride == 4
    assert model.out_stride == stride
    x = torch.randn(2, 1, size, size)
    mask = simmim_masks(2, model.grid, 2, 0.5, generator=torch.Generator().manual_seed(1))
    pixel_mask = mask.repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1)
    x2 = torch.where(pixel_mask, x + 3.0, x)  # change only the masked pixels
    with torch.no_grad():
        torch.testing.assert_close(model.encode_masked(x2, mask), model.encode_masked(x, mask))
        unmasked = torch.zeros_like(mask)
        assert not torch.allclose(model.encode_masked(x2, unmasked), model.encode_masked(x, unmasked))
    out = model.training_step(([x], torch.zeros(2)), 0)
    assert model.decoder(model.encode_masked(x, mask)).shape == x.shape  # one linear layer + pixel shuffle: every pixel
    out["loss"].backward()
    token = model.backbone.mask_token if make is vit else model.mask_token
    assert token.grad is not None
    assert token.grad.abs().sum() > 0
    assert "embed_input" in out
    assert model.embed(x).shape == (2, model.backbone.num_features)


def test_bad_settings():
    with pytest.raises(ValueError, match="mask_patch_size 6 must be a multiple of the stem's stride"):
        SimMIM(vit(), mask_patch_size=6)
    with pytest.raises(ValueError, match=r"mask_ratio must lie in \(0, 1\)"):
        SimMIM(vit(), mask_patch_size=8, mask_ratio=1.0)
    with pytest.raises(ValueError, match=r"SimMIM needs a lightning_ssl\.modules\.vit\.ViT or a timm model"):
        SimMIM(SmallCNN(1, 16, width=4))
    with pytest.raises(ValueError, match="cannot take 1-channel 16 px images"):
        SimMIM(
            TimmBackbone(
                "convnext_atto",
                in_channels=1,
                image_size=16,
                model_kwargs=dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1)),
            ),
            mask_patch_size=8,
        )


def test_encode_gives_the_embedding_like_every_method():
    """``encode(images)`` is ``SSLMethod.encode``: embed's features in eval mode, on the CPU (the masked forward
    is ``encode_masked``)."""
    torch.manual_seed(0)
    model = SimMIM(vit(), mask_patch_size=8)
    x = torch.randn(3, 1, 16, 16)
    features = model.encode(x)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(features, model.embed(x))
    assert features.shape == (3, model.num_features)
