"""DINOv2 completed: Sinkhorn-Knopp teacher centering for DINO and iBOT against the reference code, over the global
batch under DDP; separate or shared DINO / iBOT heads; register tokens in the ViT for every ViT method (dropped from
tokens, features and attention maps); bad settings refused. DDP equivalence of the whole step:
tests/test_ddp_equivalence.py (``dino_sinkhorn``, ``dino_ibot_sinkhorn_separate``)."""

import pytest
import torch
import torch.nn.functional as F

from lightning_ssl.eval.export import vit_to_hf
from lightning_ssl.losses import DINOLoss, IBOTPatchLoss, sinkhorn_knopp_teacher
from lightning_ssl.methods import DINO, IJEPA, MAE, BEiT, Colorization, SimMIM, VisualTokenizer
from lightning_ssl.modules.vit import ViT
from tests.helpers import run_distributed
from tests.test_dino import HEAD, crops, tiny_data, tiny_vit, trainer


# --- the reference: facebookresearch/dinov2 -------------------------------------------------------------------------
def reference_sinkhorn_knopp_teacher(teacher_output, teacher_temp, n_masked_patches=None, n_iterations=3):
    """``sinkhorn_knopp_teacher`` of facebookresearch/dinov2 ``dinov2/loss/dino_clstoken_loss.py`` (and of
    ``ibot_patch_loss.py``, where B is ``n_masked_patches``), one process, in float64."""
    teacher_output = teacher_output.double()
    Q = torch.exp(teacher_output / teacher_temp).t()
    B = Q.shape[1] if n_masked_patches is None else n_masked_patches
    K = Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(n_iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def reference_dinov2_dino_loss(student_global, student_local, teacher_global, n_local, student_temp, teacher_temp):
    """The DINO terms of ``SSLMetaArch.forward_backward`` (``dinov2/train/ssl_meta_arch.py``) with
    ``centering == "sinkhorn_knopp"``: the teacher's crops swapped, one Sinkhorn plan over both, the local-crop and
    global-crop losses (``DINOLoss.forward``) each divided by the number of loss terms."""
    a, b = teacher_global.chunk(2)
    teacher = torch.cat((b, a))  # "chunked and cat'd in reverse so A is matched to B"
    q = reference_sinkhorn_knopp_teacher(teacher, teacher_temp).view(2, -1, teacher.shape[-1])

    def dino_loss(students, teachers):
        total = 0
        for s in students:
            lsm = F.log_softmax(s.double() / student_temp, dim=-1)
            for t in teachers:
                total -= torch.sum(t * lsm, dim=-1).mean()
        return total

    terms = 2 * n_local + 2
    local = dino_loss(student_local.chunk(n_local), q) / terms
    global_ = dino_loss([student_global], [q.flatten(0, 1)]) * 2 / terms
    return local + global_


def reference_ibot_forward_masked(student_masked, teacher_probs, masks, student_temp):
    """``iBOTPatchLoss.forward_masked`` of ``dinov2/loss/ibot_patch_loss.py`` (the ``lossfunc`` without xFormers)."""
    loss = torch.sum(teacher_probs * F.log_softmax(student_masked.double() / student_temp, dim=-1), dim=-1)
    masks_weight = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    return -(loss * masks_weight).sum() / masks.shape[0]


# --- Sinkhorn-Knopp centering ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("tt", [0.04, 0.07])
def test_sinkhorn_knopp_teacher_matches_dinov2(tt):
    t = torch.randn(12, 7)
    expected = reference_sinkhorn_knopp_teacher(t, tt)
    got = sinkhorn_knopp_teacher(t, tt)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.sum(1), torch.ones(12))  # each row an assignment
    # the plan spreads the mass over the prototypes more evenly than the plain softmax does
    assert got.sum(0).std() < F.softmax(t / tt, dim=-1).sum(0).std()


def test_dino_loss_with_sinkhorn_centering_matches_dinov2():
    b, k, n_local, tt = 5, 11, 3, 0.05
    s_global, s_local, t_global = torch.randn(2 * b, k), torch.randn(n_local * b, k), torch.randn(2 * b, k)
    expected = reference_dinov2_dino_loss(s_global, s_local, t_global, n_local, 0.1, tt)
    crit = DINOLoss(k, student_temp=0.1, centering="sinkhorn")
    got = crit(list(s_global.chunk(2)) + list(s_local.chunk(n_local)), t_global.chunk(2), tt)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert crit.center.abs().sum() == 0  # no EMA center with Sinkhorn centering


def test_ibot_loss_with_sinkhorn_centering_matches_dinov2():
    masks = torch.tensor([[True, False, True, True], [False, False, False, False], [False, True, False, False]])
    m, k, tt = int(masks.sum()), 9, 0.04
    student, teacher = torch.randn(m, k), torch.randn(m, k)
    q = reference_sinkhorn_knopp_teacher(teacher, tt, n_masked_patches=m)
    expected = reference_ibot_forward_masked(student, q, masks, 0.1)
    crit = IBOTPatchLoss(k, student_temp=0.1, centering="sinkhorn")
    assert crit(student, teacher, masks, tt).item() == pytest.approx(expected.item(), rel=1e-5)
    assert crit.center.abs().sum() == 0


def _sinkhorn_worker(rank, world_size, rows):
    torch.manual_seed(0)
    everything = torch.randn(sum(rows), 6)
    start = sum(rows[:rank])
    return sinkhorn_knopp_teacher(everything[start : start + rows[rank]], 0.05), everything


@pytest.mark.parametrize("rows", [[4, 4], [5, 2], [0, 3]], ids=["equal", "unequal", "one-empty"])
def test_sinkhorn_over_the_global_batch_in_ddp(rows):
    """Each process's targets are its rows of the one plan over the rows of all processes (DINO: equal counts;
    iBOT: the processes mask different numbers of patches, even none), as the reference's all_reduce does."""
    (q0, everything), (q1, _) = run_distributed(_sinkhorn_worker, rows)
    whole = sinkhorn_knopp_teacher(everything, 0.05)
    torch.testing.assert_close(torch.cat([q0, q1]), whole, rtol=1e-5, atol=1e-7)
    if rows[0] and rows[1]:  # not the plan each process would find alone
        assert not torch.allclose(q0, sinkhorn_knopp_teacher(everything[: rows[0]], 0.05), atol=1e-4)


# --- the method: Sinkhorn and separate heads -------------------------------------------------------------------------
def test_separate_ibot_head_trains_its_own_prototypes():
    model = DINO(tiny_vit(), **HEAD, ibot_weight=1.0, mask_probability=1.0, ibot_separate_head=True, ibot_out_dim=16)
    assert model.ibot_head is not None
    assert model.ibot_head.out_dim == 16
    assert model.ibot_loss.center.shape == (1, 16)
    assert (model.ibot_head, model.teacher_ibot_head) in model.momentum_pairs()
    out = model.training_step((crops(), None), 0)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.ibot_head.parameters() if p.requires_grad)
    assert all(not p.requires_grad and p.grad is None for p in model.teacher_ibot_head.parameters())
    # shared head (the default): the DINO head gets the patch gradients, no second head exists
    shared = DINO(tiny_vit(), **HEAD, ibot_weight=1.0)
    assert shared.ibot_head is None
    assert not any("ibot_head" in n for n, _ in shared.named_parameters())


def test_both_last_layers_frozen_in_the_first_epoch_and_sinkhorn_trains(tmp_path):
    model = DINO(
        tiny_vit(),
        **HEAD,
        norm_last_layer=False,
        ibot_weight=1.0,
        ibot_separate_head=True,
        centering="sinkhorn",
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
    )
    last = [p.detach().clone() for h in (model.head, model.ibot_head) for p in h.last_layer.parameters()]
    mlp = [p.detach().clone() for p in model.ibot_head.mlp.parameters()]
    trainer(tmp_path, max_epochs=1).fit(model, datamodule=tiny_data())
    after = [p for h in (model.head, model.ibot_head) for p in h.last_layer.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(last, after, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(mlp, model.ibot_head.mlp.parameters(), strict=True))
    assert model.dino_loss.center.abs().sum() == 0
    assert model.ibot_loss.center.abs().sum() == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"centering": "centering"}, "centering must be 'ema'"),
        ({"ibot_separate_head": True}, "ibot_separate_head needs iBOT"),
        ({"ibot_weight": 1.0, "ibot_out_dim": 16}, "needs ibot_separate_head"),
        ({"ibot_weight": 1.0, "ibot_separate_head": True, "ibot_out_dim": 0}, "must be >= 1"),
    ],
)
def test_bad_dinov2_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DINO(tiny_vit(), **HEAD, **kwargs)


def test_bad_loss_and_vit_settings_are_refused():
    with pytest.raises(ValueError, match="sinkhorn_iterations"):
        DINOLoss(8, centering="sinkhorn", sinkhorn_iterations=0)
    with pytest.raises(ValueError, match="centering must be"):
        IBOTPatchLoss(8, centering="swav")
    with pytest.raises(ValueError, match="num_registers"):
        tiny_vit(num_registers=-1)


# --- register tokens -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_registers_are_dropped_from_every_output_and_match_timm(pos_embed):
    torch.manual_seed(0)
    vit = tiny_vit(num_registers=3, pos_embed=pos_embed).eval()
    x = torch.randn(2, 1, 16, 16)
    m = vit.model
    assert m.num_prefix_tokens == 4
    # the exported timm model (same kwargs, same weights) computes the same features
    torch.testing.assert_close(vit(x), m.forward_head(m.forward_features(x), pre_logits=True))
    tokens = vit.forward_tokens(x)
    assert tokens.shape == (2, 1 + 16, 32)  # CLS + patches, as without registers
    full = m.forward_features(x)  # timm: (B, 1 + 3 + 16, D), normalized
    torch.testing.assert_close(tokens, torch.cat([full[:, :1], full[:, 4:]], dim=1))
    if pos_embed == "sincos":  # no position for the CLS token and the registers
        assert m.pos_embed[0, :4].abs().sum() == 0
    # the registers take part in attention: other register values, other features
    with torch.no_grad():
        m.reg_token.add_(torch.randn_like(m.reg_token))
    assert not torch.allclose(vit(x), m.forward_head(full, pre_logits=True))
    assert vit(torch.randn(2, 1, 8, 8)).shape == (2, 32)  # DINO's local crops: interpolated patch positions


def test_attention_maps_skip_the_registers():
    torch.manual_seed(0)
    vit = tiny_vit(num_registers=2).eval()
    x = torch.randn(2, 1, 16, 16)
    captured = {}
    attn = vit.model.blocks[-1].attn
    attn.fused_attn = False  # timm's explicit path: softmax(q k^T * scale) goes through attn_drop
    handle = attn.attn_drop.register_forward_hook(lambda mod, inp, out: captured.setdefault("a", inp[0]))
    vit.model.forward_features(x)
    handle.remove()
    weights = captured["a"][:, :, 0]  # (B, heads, 1 + 2 + 16): CLS -> CLS, registers, patches
    torch.testing.assert_close(vit.last_attention(x), weights[:, :, 3:].reshape(2, 2, 4, 4))
    assert (vit.last_attention(x).sum((-1, -2)) < 1).all()  # the rest went to CLS and the registers
    model = DINO(tiny_vit(num_registers=2), **HEAD)
    assert model.attention_maps(x).shape == (2, 2, 4, 4)


def test_hf_export_of_a_vit_with_registers_is_refused():
    with pytest.raises(ValueError, match="register tokens"):
        vit_to_hf(tiny_vit(num_registers=4))


def _visual_tokenizer(vit):
    return VisualTokenizer(vit, num_codes=16, code_dim=4, decoder_dim=16, decoder_depth=1, decoder_heads=2)


VIT_METHODS = {  # every method that takes a lightning_ssl ViT
    "mae": lambda v: MAE(v, decoder_dim=16, decoder_depth=1, decoder_heads=2),
    "simmim": lambda v: SimMIM(v, mask_patch_size=8),
    "ijepa": lambda v: IJEPA(v, predictor_dim=16, predictor_depth=1, predictor_heads=2, min_context=2),
    "beit": lambda v: BEiT(v, _visual_tokenizer(tiny_vit())),
    "dino_ibot_gram": lambda v: DINO(v, **HEAD, ibot_weight=1.0, mask_probability=1.0, gram_weight=1.0),
    "colorization": lambda v: Colorization(v),
    "visual_tokenizer": _visual_tokenizer,
}


@pytest.mark.parametrize("name", sorted(VIT_METHODS))
def test_every_vit_method_trains_with_registers(name):
    """The registers reach no output (the methods' patch bookkeeping - slicing, masks, ids_keep, positions - sees
    the layout it always saw) but take part in the computation: they get gradients."""
    torch.manual_seed(0)
    vit = ViT(in_channels=1, image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_registers=2)
    model = VIT_METHODS[name](vit)
    x = torch.rand(4, 3 if name == "colorization" else 1, 16, 16)  # colorization: RGB in, lightness to the ViT
    views = crops() if name.startswith("dino") else [x]
    out = model.training_step((views, torch.zeros(4, dtype=torch.long)), 0)
    loss = out["loss"] if isinstance(out, dict) else out
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.model.reg_token.grad is not None
    assert model.backbone.model.reg_token.grad.abs().sum() > 0
    assert model.embed(views[0]).shape == (4, 32)
