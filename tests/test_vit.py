"""The ViT's recipe options (BEiT, SimMIM, I-JEPA): layer scale, a shared relative position bias, depth-scaled init,
no absolute positions, no CLS token."""

import math

import pytest
import torch

from lightning_ssl.modules.vit import ViT


def vit(**kw) -> ViT:
    return ViT(
        **{"in_channels": 3, "image_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 3, "num_heads": 2, **kw}
    )


def beit_relative_position_index(h: int, w: int) -> torch.Tensor:
    """microsoft/unilm beit/modeling_finetune.py RelativePositionBias, transcribed: (1 + h w, 1 + h w) indices into
    a table of (2h - 1)(2w - 1) + 3 rows, the last three for CLS -> patch, patch -> CLS and CLS -> CLS."""
    n = (2 * h - 1) * (2 * w - 1) + 3
    index = torch.zeros(h * w + 1, h * w + 1, dtype=torch.long)
    for i in range(h * w):
        for j in range(h * w):
            dy, dx = i // w - j // w, i % w - j % w
            index[i + 1, j + 1] = (dy + h - 1) * (2 * w - 1) + (dx + w - 1)
    index[0, :] = n - 3
    index[:, 0] = n - 2
    index[0, 0] = n - 1
    return index


def test_relative_position_bias_is_beits_table_lookup():
    model = vit(rel_pos_bias=True)
    table = model.rel_pos_bias.relative_position_bias_table
    with torch.no_grad():
        table.normal_()
    bias = model._attn_bias()  # (1, heads, 17, 17)
    expected = table[beit_relative_position_index(4, 4)].permute(2, 0, 1)[None]
    torch.testing.assert_close(bias, expected)
    ids = torch.tensor([[3, 0, 9], [15, 4, 5]])
    sub = model._attn_bias(ids)  # (2, heads, 4, 4): rows and columns of the kept tokens (CLS first)
    for b in range(2):
        keep = torch.cat([torch.zeros(1, dtype=torch.long), ids[b] + 1])
        torch.testing.assert_close(sub[b], expected[0][:, keep][:, :, keep])


def test_every_block_gets_the_shared_bias_and_it_changes_the_output():
    torch.manual_seed(0)
    model = vit(rel_pos_bias=True).eval()
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    seen = []
    for blk in model.model.blocks:
        blk.attn.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["attn_mask"]), with_kwargs=True)
    with torch.no_grad():
        model.rel_pos_bias.relative_position_bias_table.normal_()
    after = model(x)
    assert len(seen) == 3
    assert all(torch.equal(s, seen[0]) for s in seen)
    assert not torch.allclose(before, after)
    # the bias is all there is of position: a subset of patches gives each kept token the same output as a full
    # run would if the others were absent - here: all patches kept, in image order, equals the full run
    torch.testing.assert_close(
        model.forward_tokens(x, ids_keep=torch.arange(16).expand(2, -1)), model.forward_tokens(x)
    )


def test_relative_position_bias_refuses_another_grid():
    with pytest.raises(ValueError, match="relative position bias"):
        vit(rel_pos_bias=True)(torch.randn(1, 3, 8, 8))


def test_layer_scale_starts_at_its_init_value():
    model = vit(layer_scale=0.1)
    gammas = [m.ls1.gamma for m in model.model.blocks] + [m.ls2.gamma for m in model.model.blocks]
    assert all(torch.equal(g, torch.full((32,), 0.1)) for g in gammas)
    assert all(g.ndim == 1 for g in gammas)  # 1-D: no weight decay, as BEiT's gamma_1 / gamma_2


def test_depth_scaled_init_divides_output_projections_by_sqrt_2l():
    torch.manual_seed(0)
    plain = vit(depth=6, embed_dim=64)
    torch.manual_seed(0)
    scaled = vit(depth=6, embed_dim=64, depth_scaled_init=True)
    for layer, (a, b) in enumerate(zip(plain.model.blocks, scaled.model.blocks, strict=True), start=1):
        torch.testing.assert_close(b.attn.proj.weight, a.attn.proj.weight / math.sqrt(2 * layer))
        torch.testing.assert_close(b.mlp.fc2.weight, a.mlp.fc2.weight / math.sqrt(2 * layer))
        torch.testing.assert_close(b.attn.qkv.weight, a.attn.qkv.weight)


def test_no_absolute_positions():
    model = vit(pos_embed="none", rel_pos_bias=True)
    assert not model.model.pos_embed.requires_grad
    assert torch.count_nonzero(model.model.pos_embed) == 0


def test_no_class_token_gives_the_patch_mean_first():
    model = vit(class_token=False, pool="avg", pos_embed="sincos").eval()
    assert model.model.cls_token is None
    x = torch.randn(2, 3, 16, 16)
    tokens = model.forward_tokens(x)
    assert tokens.shape == (2, 17, 32)
    torch.testing.assert_close(tokens[:, 0], tokens[:, 1:].mean(1))
    torch.testing.assert_close(model(x), tokens[:, 1:].mean(1))
    assert model.forward_tokens(x, ids_keep=torch.tensor([[0, 5], [7, 2]])).shape == (2, 3, 32)
    with pytest.raises(ValueError, match="CLS"):
        model.last_attention(x)
    with pytest.raises(ValueError, match="pool 'token' needs the CLS token"):
        vit(class_token=False, pool="token")


def test_attention_maps_include_the_bias():
    torch.manual_seed(0)
    model = vit(rel_pos_bias=True).eval()
    x = torch.randn(1, 3, 16, 16)
    plain = model.last_attention(x)
    with torch.no_grad():
        model.rel_pos_bias.relative_position_bias_table.normal_(std=3.0)
    assert not torch.allclose(plain, model.last_attention(x))
