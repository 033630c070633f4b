"""Every method's training step in a real 2-process DDP group (gloo, CPU), each process holding half of the
batch, gives the same loss and the same parameter gradients as one process holding the whole batch.

BatchNorm is put in eval mode so the comparison is exact (per-process batch statistics are a property of
BatchNorm, not of the loss); the ``*_syncbn`` cases keep it in training mode and synchronize it across the
processes instead (``DistributedBatchNorm``). A new method is covered by adding one entry to ``CASES``.

Methods that draw random numbers inside the step (MAE's masks, iBOT's and BEiT's block masks, jigsaw's
permutations and tile offsets) make both runs draw them for the whole batch from one seed; each process keeps its own
rows (``SHARDED_DRAWS``), so the comparison is between the same computations. The visual tokenizer's cases also
compare its EMA codebook state (k-means init from the gathered first batch, cluster sizes, sums, restarts)."""

from __future__ import annotations

import inspect
from contextlib import ExitStack
from unittest import mock

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import lightning_ssl.methods.aim as aim_module
import lightning_ssl.methods.beit as beit_module
import lightning_ssl.methods.bert as bert_module
import lightning_ssl.methods.dino as dino_module
import lightning_ssl.methods.ijepa as ijepa_module
import lightning_ssl.methods.jigsaw as jigsaw_module
import lightning_ssl.methods.mae as mae_module
import lightning_ssl.methods.simmim as simmim_module
import lightning_ssl.methods.t5 as t5_module
from lightning_ssl.methods import (
    AIM,
    BERT,
    BYOL,
    CLIP,
    DINO,
    GPT,
    IJEPA,
    MAE,
    MMCR,
    NNCLR,
    T5,
    BarlowTwins,
    BEiT,
    Colorization,
    DenseCL,
    Jigsaw,
    LeJEPA,
    MoCo,
    MoCoV3,
    RotNet,
    SimCLR,
    SimMIM,
    SimSiam,
    SwAV,
    VICReg,
    VisualTokenizer,
)
from lightning_ssl.modules.backbones import SmallCNN, TimmBackbone
from lightning_ssl.modules.distributed import gather
from lightning_ssl.modules.prefix_vit import PrefixCausalViT
from lightning_ssl.modules.sync_bn import convert_batchnorm
from lightning_ssl.modules.text import TextTransformer
from lightning_ssl.modules.tokenizer import TextTokenizer
from lightning_ssl.modules.vit import ViT
from tests.helpers import run_distributed

N, C, S = 8, 1, 16  # global batch, channels, image size


def cnn():
    return SmallCNN(in_channels=C, image_size=S, width=4)


def two_views(g: torch.Generator):
    return [torch.randn(N, C, S, S, generator=g), torch.randn(N, C, S, S, generator=g)], torch.arange(N) % 4


def four_views(g: torch.Generator):  # MMCR: several views of one size
    return [torch.randn(N, C, S, S, generator=g) for _ in range(4)], torch.arange(N) % 4


def classifier():
    from lightning_ssl.eval.finetune import Classifier

    return Classifier(cnn(), num_classes=4)


def one_view(g: torch.Generator):
    return [torch.randn(N, C, S, S, generator=g)], torch.arange(N) % 4


def vit(**kw):
    return ViT(in_channels=C, image_size=S, patch_size=4, embed_dim=16, depth=2, num_heads=2, **kw)


def dino_gram():  # the Gram teacher an earlier model (perturbed), so the anchoring term has a gradient
    model = DINO(vit(num_registers=2), hidden_dim=16, bottleneck_dim=8, out_dim=32, gram_weight=2.0)
    with torch.no_grad():
        for p in model.gram.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def multi_crop(g: torch.Generator):  # DINO: 2 global crops of 16 px, 2 local crops of 8 px
    views = [torch.randn(N, C, S, S, generator=g) for _ in range(2)] + [
        torch.randn(N, C, 8, 8, generator=g) for _ in range(2)
    ]
    return views, torch.arange(N) % 4


def colour_view(g: torch.Generator):
    return [torch.rand(N, 3, S, S, generator=g)], torch.arange(N) % 4


CAPTIONS = [
    "a red circle",
    "a blue square",
    "a green star",
    "a big yellow heart",
    "the letter a",
    "two dogs",
    "a cat face",
    "hot coffee",
]


def visual_tokenizer(teacher: bool = False):
    return VisualTokenizer(
        vit(),
        teacher=vit() if teacher else None,
        num_codes=16,
        code_dim=4,
        decoder_dim=16,
        decoder_depth=1,
        decoder_heads=2,
        dead_threshold=2.0,
    )


def beit():
    return BEiT(vit(), visual_tokenizer())  # an untrained tokenizer: the loss and its distribution are the same


def clip():
    text = TextTransformer(vocab_size=300, width=16, layers=1, heads=2, context_length=8)
    text.fit_tokenizer(CAPTIONS * 2)
    return CLIP(SmallCNN(in_channels=C, image_size=S, width=4), text, embed_dim=8, local_loss=False)


def clip_local():
    model = clip()
    model.criterion.local_loss = True
    return model


def swav_queue():  # a full queue (13 rows: the processes bring 7 and 6 of them to the Sinkhorn problem)
    model = SwAV(cnn(), proj_hidden_dim=16, proj_dim=8, num_prototypes=10, queue_size=13, queue_start_epoch=0)
    model.queue.copy_(torch.nn.functional.normalize(torch.randn_like(model.queue), dim=-1))
    model.queue_count.fill_(13)
    return model


def image_text(g: torch.Generator):
    return torch.randn(N, C, S, S, generator=g), torch.arange(N) % 4, list(CAPTIONS)


def language(cls):
    """A tiny language model with a character tokenizer (4 T5 sentinels at the top of its 64 ids)."""

    def build():
        model = cls(vocab_size=64, block_size=12, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
        model.set_tokenizer(TextTokenizer.train(CAPTIONS, "char", vocab_size=64, sentinels=4))
        return model

    return build


def token_rows(g: torch.Generator):  # packed rows of block_size + 1 token ids (special ones included)
    return torch.randint(0, 64, (N, 13), generator=g)


# name: (model factory, batch factory)
CASES = {
    "simclr": (lambda: SimCLR(cnn(), proj_hidden_dim=16, proj_dim=8), two_views),
    "moco": (lambda: MoCo(cnn(), proj_hidden_dim=16, proj_dim=8, queue_size=32), two_views),
    "moco_symmetric": (lambda: MoCo(cnn(), proj_hidden_dim=16, proj_dim=8, queue_size=32, symmetric=True), two_views),
    "mocov3": (lambda: MoCoV3(cnn(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16), two_views),
    "byol": (lambda: BYOL(cnn(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16), two_views),
    "simsiam": (lambda: SimSiam(cnn(), proj_dim=8, pred_hidden_dim=4), two_views),
    "classifier": (classifier, one_view),
    "mae": (lambda: MAE(vit(), decoder_dim=16, decoder_depth=1, decoder_heads=2), one_view),
    "dino": (lambda: DINO(vit(), hidden_dim=16, bottleneck_dim=8, out_dim=32), multi_crop),
    "dino_ibot": (lambda: DINO(vit(), hidden_dim=16, bottleneck_dim=8, out_dim=32, ibot_weight=1.0), multi_crop),
    "dino_ibot_koleo": (
        lambda: DINO(
            vit(), hidden_dim=16, bottleneck_dim=8, out_dim=32, ibot_weight=1.0, koleo_weight=0.1, koleo_local=False
        ),
        multi_crop,
    ),  # global KoLeo: exact
    "dino_resnet": (lambda: DINO(cnn(), hidden_dim=16, bottleneck_dim=8, out_dim=32), multi_crop),
    # DINOv2: one Sinkhorn-Knopp plan over the global batch (for iBOT over the masked patches of both processes,
    # their counts differ), registers, a separate iBOT head; DINOv3: Gram anchoring
    "dino_sinkhorn": (
        lambda: DINO(vit(num_registers=2), hidden_dim=16, bottleneck_dim=8, out_dim=32, centering="sinkhorn"),
        multi_crop,
    ),
    "dino_ibot_sinkhorn_separate": (
        lambda: DINO(
            vit(num_registers=1),
            hidden_dim=16,
            bottleneck_dim=8,
            out_dim=32,
            ibot_weight=1.0,
            centering="sinkhorn",
            ibot_separate_head=True,
            ibot_out_dim=24,
        ),
        multi_crop,
    ),
    "dino_gram": (dino_gram, multi_crop),
    "aim": (
        lambda: AIM(
            PrefixCausalViT(in_channels=C, image_size=S, patch_size=4, embed_dim=16, depth=2, num_heads=2),
            head_width=16,
            head_depth=1,
        ),
        one_view,
    ),
    "rotation": (lambda: RotNet(cnn()), one_view),
    "jigsaw": (
        lambda: Jigsaw(SmallCNN(in_channels=C, image_size=4, width=4), num_permutations=10, head_hidden_dim=16),
        one_view,
    ),
    "colorization": (lambda: Colorization(SmallCNN(in_channels=1, image_size=S, width=4)), colour_view),
    "colorization_regression": (
        lambda: Colorization(SmallCNN(in_channels=1, image_size=S, width=4), mode="regression"),
        colour_view,
    ),
    "clip": (clip, image_text),
    "beit": (beit, one_view),
    # k-means init on the first batch, EMA cluster sizes / sums and restarts from the global batch
    "visual_tokenizer": (visual_tokenizer, one_view),
    "visual_tokenizer_vqkd": (lambda: visual_tokenizer(teacher=True), one_view),
    "clip_local_loss": (clip_local, image_text),
    "barlow_twins": (lambda: BarlowTwins(cnn(), proj_hidden_dim=16, proj_dim=8), two_views),
    "vicreg": (lambda: VICReg(cnn(), proj_hidden_dim=16, proj_dim=8), two_views),
    "swav": (lambda: SwAV(cnn(), proj_hidden_dim=16, proj_dim=8, num_prototypes=10), multi_crop),
    "swav_queue": (swav_queue, multi_crop),
    "nnclr": (lambda: NNCLR(cnn(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16, queue_size=12), two_views),
    "ijepa": (lambda: IJEPA(vit(), predictor_dim=16, predictor_depth=1, predictor_heads=2, min_context=2), one_view),
    "simmim": (lambda: SimMIM(vit(), mask_patch_size=8), one_view),
    "simmim_swin": (
        lambda: SimMIM(
            TimmBackbone(
                "swin_tiny_patch4_window7_224",
                in_channels=C,
                image_size=S,
                model_kwargs=dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=2, drop_path_rate=0.0),
            ),  # no random depth
            mask_patch_size=8,
        ),
        one_view,
    ),
    # SIGReg's characteristic function over the global batch (per view; flattened alone, lambda = 1)
    "lejepa": (lambda: LeJEPA(cnn(), proj_hidden_dim=16, proj_dim=8, lambda_sigreg=0.5, num_slices=16), multi_crop),
    "lejepa_sigreg_flat": (
        lambda: LeJEPA(cnn(), proj_hidden_dim=16, proj_dim=8, lambda_sigreg=1.0, num_slices=16, per_view=False),
        multi_crop,
    ),
    # the nuclear norm of the global batch's centroid matrix (+ the per-image term, multi-crop views)
    "mmcr": (lambda: MMCR(cnn(), proj_hidden_dim=16, proj_dim=8), four_views),
    "mmcr_local": (lambda: MMCR(cnn(), proj_hidden_dim=16, proj_dim=8, lambda_local=0.5), multi_crop),
    # shuffle-BN keys, two queues filled from every process
    "densecl": (lambda: DenseCL(cnn(), proj_hidden_dim=16, proj_dim=8, queue_size=32), two_views),
    # token-mean losses: BERT's processes mask different numbers of tokens, and the mean is still the global one
    "gpt": (language(GPT), token_rows),
    "bert": (language(BERT), token_rows),
    "t5": (language(T5), token_rows),
}
LANGUAGE = {"gpt", "bert", "t5"}  # no image features: the monitoring rule (test_probe_rule) does not apply
SYNC_BN = {  # BatchNorm in training mode, synchronized over the processes
    "simclr_syncbn": CASES["simclr"],
    "byol_syncbn": CASES["byol"],
}
CASES.update(SYNC_BN)


def _rows(full, rank: int, world: int, groups: int = 1):
    """This process's rows of a whole-batch draw laid out as ``groups`` stacked views of the global batch."""
    if isinstance(full, (tuple, list)):
        return tuple(_rows(f, rank, world, groups) for f in full)
    n = full.shape[0] // (groups * world)
    return full.view(groups, world, n, *full.shape[1:])[:, rank].reshape(groups * n, *full.shape[1:])


def _sharded(fn, rank: int, world: int, groups: int = 1, seed: int = 7):
    """``fn(batch, *args)`` drawn for ``world`` times the batch from a fixed seed; this process's rows returned."""

    def draw(batch_size, *args, **kwargs):
        bound = inspect.signature(fn).bind(batch_size * world, *args, **kwargs)
        bound.arguments["generator"] = torch.Generator().manual_seed(seed)
        return _rows(fn(*bound.args, **bound.kwargs), rank, world, groups)

    return draw


def _jigsaw_draws(rank: int, world: int):
    real_randint, real_tiles = torch.randint, jigsaw_module.extract_tiles

    def randint(high, size, device=None):  # the permutation index of every sample
        full = real_randint(high, (size[0] * world,), generator=torch.Generator().manual_seed(7))
        return _rows(full, rank, world).to(device)

    def tiles(x, grid, t, jitter):  # the tile offsets of every sample
        full = real_randint(
            0, x.shape[-1] // grid - t + 1, (len(x) * world, 2, grid * grid), generator=torch.Generator().manual_seed(8)
        )
        return real_tiles(x, grid, t, jitter=jitter, offsets=_rows(full, rank, world).transpose(0, 1))

    return [mock.patch.object(torch, "randint", randint), mock.patch.object(jigsaw_module, "extract_tiles", tiles)]


def _gathered(fn, rank: int, world: int, seed: int = 7, batched=("ids", "special")):
    """``fn`` on the whole batch (the ``batched`` arguments all-gathered from the processes) with a generator from a
    fixed seed; this process's rows of each output returned (BERT's masks, T5's spans)."""

    def draw(*args, **kwargs):
        bound = inspect.signature(fn).bind(*args, **kwargs)
        for name in batched:
            if name in bound.arguments:
                bound.arguments[name] = gather(bound.arguments[name], with_grad=False)
        bound.arguments["generator"] = torch.Generator().manual_seed(seed)
        return tuple(out.chunk(world)[rank] for out in fn(*bound.args, **bound.kwargs))

    return draw


SHARDED_DRAWS = {  # name prefix: patches that make a process draw its rows of the whole batch's random numbers
    "mae": lambda r, w: [mock.patch.object(mae_module, "random_masking", _sharded(mae_module.random_masking, r, w))],
    "aim": lambda r, w: [
        mock.patch.object(aim_module, "random_prefix_lengths", _sharded(aim_module.random_prefix_lengths, r, w))
    ],
    "dino_ibot": lambda r, w: [
        mock.patch.object(dino_module, "block_masking", _sharded(dino_module.block_masking, r, w, groups=2))
    ],
    "jigsaw": _jigsaw_draws,
    "beit": lambda r, w: [mock.patch.object(beit_module, "beit_masking", _sharded(beit_module.beit_masking, r, w))],
    "ijepa": lambda r, w: [
        mock.patch.object(ijepa_module, "multiblock_masks", _sharded(ijepa_module.multiblock_masks, r, w))
    ],
    "simmim": lambda r, w: [
        mock.patch.object(simmim_module, "simmim_masks", _sharded(simmim_module.simmim_masks, r, w))
    ],
    "bert": lambda r, w: [mock.patch.object(bert_module, "mlm_mask", _gathered(bert_module.mlm_mask, r, w))],
    "t5": lambda r, w: [mock.patch.object(t5_module, "span_corruption", _gathered(t5_module.span_corruption, r, w))],
}


def _draws(name: str, rank: int, world: int) -> ExitStack:
    stack = ExitStack()
    for prefix, patches in SHARDED_DRAWS.items():
        if name.startswith(prefix):
            for p in patches(rank, world):
                stack.enter_context(p)
    return stack


STATE = (
    "queue",
    "queue_ptr",
    "center",
    "codebook",
    "cluster_size",
    "embed_sum",
    "restarted",
    "dense_queue",
    "dense_queue_ptr",
    "calls",
)  # buffers every process must hold alike (by their own name, any module)


class _Step(nn.Module):
    """What Lightning's DDP wrapper does: the wrapped module's forward is the training step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch):
        out = self.model.training_step(batch, 0)
        return out["loss"] if isinstance(out, dict) else out


def _build(name: str, distributed: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = CASES[name][0]()
    if name in SYNC_BN:
        return convert_batchnorm(model) if distributed else model
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def _batch(name: str):
    return CASES[name][1](torch.Generator().manual_seed(1))


def _slice(obj, sl):
    if isinstance(obj, torch.Tensor):
        return obj[sl]
    if isinstance(obj, list) and all(isinstance(o, str) for o in obj):  # captions
        return obj[sl]
    if isinstance(obj, (list, tuple)):
        return type(obj)(_slice(o, sl) for o in obj)
    return obj


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _ddp_step(rank: int, world_size: int, name: str):
    import warnings

    warnings.filterwarnings("ignore")
    model = _build(name, distributed=True)
    ddp = DistributedDataParallel(_Step(model), find_unused_parameters=True)
    n = N // world_size
    with _draws(name, rank, world_size):
        loss = ddp(_slice(_batch(name), slice(rank * n, (rank + 1) * n)))
    loss.backward()
    total = loss.detach().clone()
    torch.distributed.all_reduce(total)
    return (total / world_size).item(), _grads(model), {k: v.clone() for k, v in model.named_buffers()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ddp_matches_single_process(name):
    model = _build(name)
    with _draws(name, 0, 1):
        loss = _Step(model)(_batch(name))
    loss.backward()
    ref_grads, ref_buffers = _grads(model), dict(model.named_buffers())
    assert ref_grads, "the method produced no gradients"
    for ddp_loss, grads, buffers in run_distributed(_ddp_step, name):
        assert ddp_loss == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
        assert grads.keys() == ref_grads.keys()
        # synchronized BatchNorm computes the same statistics by another sum (E[x^2] - E[x]^2), hence the looser bound
        tol = dict(rtol=1e-3, atol=1e-5) if name in SYNC_BN else dict(rtol=1e-4, atol=1e-6)
        for k in ref_grads:
            torch.testing.assert_close(grads[k], ref_grads[k], **tol, msg=lambda m, k=k: f"grad of {k}: {m}")
        for k in [b for b in ref_buffers if b.rsplit(".", 1)[-1] in STATE or "running_" in b]:
            if k in ref_buffers:
                torch.testing.assert_close(
                    buffers[k].float(), ref_buffers[k].float(), **tol, msg=lambda m, k=k: f"{k}: {m}"
                )
