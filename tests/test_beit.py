"""BEiT: block-wise masking, the masked-token loss, the frozen tokenizer, the two-stage recipe, and BEiT models from
Hugging Face as backbones."""

import math
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_ssl.methods.beit as beit_module
from lightning_ssl.losses import masked_token_loss
from lightning_ssl.methods import BEiT, VisualTokenizer
from lightning_ssl.modules.masking import beit_masking
from lightning_ssl.modules.vit import ViT

ROOT = Path(__file__).resolve().parents[1]


def vit(**kw):
    return ViT(
        **{"in_channels": 1, "image_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2, **kw}
    )


def tokenizer(**kw):
    return VisualTokenizer(vit(), num_codes=32, code_dim=8, decoder_dim=16, decoder_depth=1, decoder_heads=2, **kw)


# --- masking --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("grid", "num_masked", "min_block"), [((14, 14), 75, 16), ((7, 7), 19, 4), ((8, 8), 24, 5)])
def test_beit_masking_ratio_blocks_and_limits(grid, num_masked, min_block):
    masks, blocks = beit_masking(400, grid, generator=torch.Generator().manual_seed(0), return_blocks=True)
    h, w = grid
    assert masks.shape == (400, h * w)
    assert masks.dtype == torch.bool
    counts = masks.sum(1)
    assert int(counts.max()) <= num_masked  # the defaults scale BEiT's 75 of 196 and blocks of 16
    ratio = counts.float().mean().item() / (h * w)
    assert 0.9 * num_masked / (h * w) <= ratio <= num_masked / (h * w)  # ~40% at 14x14: 75/196 = 38%
    for mask, rects in zip(masks, blocks, strict=True):
        union = torch.zeros(h, w, dtype=torch.bool)
        for top, left, bh, bw in rects:
            assert bh * bw >= min_block
            assert 0.3 - 1e-9 <= bh / bw <= 1 / 0.3 + 1e-9
            assert top >= 0
            assert top + bh <= h
            assert left >= 0
            assert left + bw <= w
            union[top : top + bh, left : left + bw] = True
        assert torch.equal(union.flatten(), mask)  # the mask is exactly its rectangles: contiguous blocks
    # per-sample masks differ, and a generator makes them reproducible
    assert not torch.equal(masks[0], masks[1])
    assert torch.equal(masks, beit_masking(400, grid, generator=torch.Generator().manual_seed(0)))


def test_beit_masking_follows_the_reference_algorithm():
    """A straightforward re-implementation of BEiT's generator (alg. 1) from the same uniform draws."""
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = beit_masking(20, (7, 7), num_masked=19, min_block=4, generator=g1)
    per_draw = 19 // 4 + 2
    draws = torch.rand(20, per_draw, 10, 4, generator=g2).tolist()
    for i in range(20):
        mask, count, pool = [[False] * 7 for _ in range(7)], 0, draws[i]
        while count < 19:
            if not pool:
                pool = torch.rand(per_draw, 10, 4, generator=g2).tolist()
            added = 0
            for ua, ur, ut, ul in pool.pop():
                area = 4 + (max(4, 19 - count) - 4) * ua
                ar = math.exp(math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * ur)
                bh, bw = round(math.sqrt(area * ar)), round(math.sqrt(area / ar))
                if bh * bw < 4 or not (0 < bh <= 7 and 0 < bw <= 7) or not 0.3 <= bh / bw <= 1 / 0.3:
                    continue
                top, left = int(ut * (7 - bh + 1)), int(ul * (7 - bw + 1))
                new = sum(not mask[r][c] for r in range(top, top + bh) for c in range(left, left + bw))
                if 0 < new <= 19 - count:
                    for r in range(top, top + bh):
                        for c in range(left, left + bw):
                            mask[r][c] = True
                    added = new
                    break
            if added == 0:
                break
            count += added
        assert got[i].tolist() == [v for row in mask for v in row], i


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_masked": 0}, "num_masked must lie in"),
        ({"num_masked": 49}, "num_masked must lie in"),
        ({"min_block": 0}, "min_block must lie in"),
        ({"min_block": 30, "num_masked": 20}, "min_block must lie in"),
        ({"aspect": (2.0, 1.0)}, "aspect ratio range"),
        ({"attempts": 0}, "attempts must be"),
    ],
)
def test_beit_masking_rejects_impossible_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        beit_masking(2, (7, 7), **kwargs)


# --- the loss -------------------------------------------------------------------------------------------------
def test_masked_token_loss_hand_computed_and_ignores_unmasked_positions():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]])
    targets = torch.tensor([[0, 2], [2, 1]])
    mask = torch.tensor([[True, False], [True, True]])
    lse = lambda v: math.log(sum(math.exp(x) for x in v))  # noqa: E731
    want = ((lse([2, 0, 0]) - 2) + (lse([0, 0, 3]) - 3) + (lse([1, 1, 1]) - 1)) / 3
    assert masked_token_loss(logits, targets, mask).item() == pytest.approx(want, rel=1e-6)
    changed_logits, changed_targets = logits.clone(), targets.clone()
    changed_logits[0, 1] = torch.tensor([9.0, -9.0, 4.0])
    changed_targets[0, 1] = 0
    assert masked_token_loss(changed_logits, changed_targets, mask).item() == pytest.approx(want, rel=1e-6)
    # pre-selected masked logits and a normalizer (the global count / world size under DDP)
    assert masked_token_loss(logits[mask], targets[mask], normalizer=6.0).item() == pytest.approx(want / 2, rel=1e-6)


# --- the method -----------------------------------------------------------------------------------------------
class FixedTokens(nn.Module):
    """A user-supplied tokenizer: returns the ids it holds."""

    def __init__(self, ids: torch.Tensor, num_codes: int = 32) -> None:
        super().__init__()
        self.register_buffer("ids", ids)
        self.num_codes = num_codes

    def tokenize(self, images):
        return self.ids[: len(images)]


def test_loss_is_cross_entropy_on_masked_positions_only():
    torch.manual_seed(0)
    ids = torch.randint(0, 32, (4, 4, 4))
    model = BEiT(vit(), FixedTokens(ids))
    x = torch.randn(4, 1, 16, 16)
    mask = beit_masking(4, (4, 4), generator=torch.Generator().manual_seed(0))
    with mock.patch.object(beit_module, "beit_masking", return_value=mask):
        loss = model.training_step(([x], torch.zeros(4)), 0)["loss"]
        # a plain re-implementation: ViT with [MASK] tokens, the head on every position, CE where masked
        logits = model.head(model.backbone.forward_tokens(x, mask=mask)[:, 1:])
        want = F.cross_entropy(logits[mask], ids.flatten(1)[mask])
        torch.testing.assert_close(loss, want)
        # token ids at unmasked positions do not matter; at masked ones they do
        other = ids.flatten(1).clone()
        other[~mask] = (other[~mask] + 1) % 32
        model.tokenizer.ids.copy_(other.view(4, 4, 4))
        torch.testing.assert_close(model.training_step(([x], torch.zeros(4)), 0)["loss"], loss)
        other[mask] = (other[mask] + 1) % 32
        model.tokenizer.ids.copy_(other.view(4, 4, 4))
        assert not torch.allclose(model.training_step(([x], torch.zeros(4)), 0)["loss"], loss)


def test_masked_patches_are_replaced_by_the_learned_mask_embedding():
    torch.manual_seed(0)
    model = BEiT(vit(), tokenizer())
    x = torch.randn(2, 1, 16, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :5] = True
    y = x.clone()
    y[:, :, :4, :] = torch.randn(2, 1, 4, 16)  # the first row of patches (all masked) changes
    a, b = (model.backbone.forward_tokens(v, mask=mask) for v in (x, y))
    torch.testing.assert_close(a, b)  # masked content is invisible
    assert model.backbone.mask_token is not None
    assert model.backbone.mask_token.requires_grad


def test_tokenizer_is_frozen_and_gets_no_gradient():
    torch.manual_seed(0)
    tok = tokenizer().train()
    tok.forward_tokenizer(torch.randn(8, 1, 16, 16))  # k-means init: a real codebook
    model = BEiT(vit(), tok)
    model.train()
    before = {k: v.clone() for k, v in model.tokenizer.state_dict().items()}
    loss = model.training_step(([torch.randn(8, 1, 16, 16)], torch.zeros(8)), 0)["loss"]
    loss.backward()
    assert not model.tokenizer.backbone.training
    assert not model.tokenizer.quantizer.training
    assert all(p.grad is None and not p.requires_grad for p in model.tokenizer.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.tokenizer.state_dict().items())  # codebook untouched
    from lightning_ssl.optim import param_groups

    trainable = {id(p) for g in param_groups(model.trainable_modules()) for p in g["params"]}
    assert not trainable & {id(p) for p in model.tokenizer.parameters()}
    assert model.head.weight.grad is not None
    assert model.backbone.mask_token.grad is not None


def test_beit_rejects_a_tokenizer_of_another_grid_and_a_non_vit():
    with pytest.raises(ValueError, match="grid"):
        BEiT(
            vit(),
            VisualTokenizer(
                vit(patch_size=8), num_codes=16, code_dim=4, decoder_dim=16, decoder_depth=1, decoder_heads=2
            ),
        )
    with pytest.raises(ValueError, match="tokenize"):
        BEiT(vit(), nn.Linear(2, 2))
    from lightning_ssl.modules.backbones import SmallCNN

    with pytest.raises(ValueError, match="ViT"):
        BEiT(SmallCNN(in_channels=1, image_size=16, width=4), tokenizer())


def test_two_stage_recipe_from_the_configs(tmp_path, caplog):
    """Stage 1 (configs/visual_tokenizer) writes a checkpoint; stage 2 (configs/beit) loads its tokenizer by path,
    which tokenizes exactly as the trained tokenizer, and records which file it was (path and sha256) in its
    hyperparameters, its checkpoint and its log; the BEiT checkpoint then loads as a backbone for evaluation."""
    import hashlib
    import logging

    from lightning_ssl.checkpoint import safe_load
    from lightning_ssl.cli import cli
    from lightning_ssl.modules.pretrained import CheckpointBackbone

    data = [
        "--data=lightning_ssl.data.SyntheticDataModule",
        "--data.image_size=28",
        "--data.channels=1",
        "--data.num_classes=4",
        "--data.num_samples=16",
        "--data.batch_size=8",
        "--data.num_workers=0",
    ]
    common = [
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--trainer.logger=false",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks=[]",
    ]
    stage1 = cli(
        [
            "fit",
            "--config",
            str(ROOT / "configs/visual_tokenizer/fashion_mnist.yaml"),
            *data,
            *common,
            "--model.init_args.num_codes=16",
            f"--trainer.default_root_dir={tmp_path}/tok",
            f"--checkpoint.dirpath={tmp_path}/tok",
        ]
    )
    ckpt = tmp_path / "tok" / "last.ckpt"
    caplog.set_level(logging.INFO)
    stage2 = cli(
        [
            "fit",
            "--config",
            str(ROOT / "configs/beit/fashion_mnist.yaml"),
            *data,
            *common,
            f"--model.init_args.tokenizer={ckpt}",
            f"--trainer.default_root_dir={tmp_path}/beit",
            f"--checkpoint.dirpath={tmp_path}/beit",
        ]
    )
    x = torch.randn(3, 1, 28, 28)
    stage1.model.eval()
    assert torch.equal(stage2.model.tokenizer.tokenize(x), stage1.model.tokenize(x))
    assert stage2.model.vocab_size == 16
    assert stage2.trainer.global_step == 2
    recorded = {"path": str(ckpt.resolve()), "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    assert stage2.model.hparams["tokenizer_checkpoint"] == recorded
    assert stage2.model.hparams_initial["tokenizer_checkpoint"] == recorded  # what the loggers are given
    assert safe_load(tmp_path / "beit" / "last.ckpt")["hyper_parameters"]["tokenizer_checkpoint"] == recorded
    assert f"BEiT tokenizer: {recorded['path']} (sha256 {recorded['sha256']})" in caplog.text
    backbone = CheckpointBackbone(str(tmp_path / "beit" / "last.ckpt")).eval()
    stage2.model.eval()
    torch.testing.assert_close(backbone(x), stage2.model.embed(x))


# --- Hugging Face BEiT as a backbone -------------------------------------------------------------------------
def _hf_config():
    from transformers import BeitConfig

    return BeitConfig(
        image_size=16,
        patch_size=4,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=40,
        use_mask_token=True,
        use_mean_pooling=False,
        use_relative_position_bias=True,
    )


def test_hf_beit_for_masked_image_modeling_loads_as_a_backbone(tmp_path):
    from transformers import BeitForMaskedImageModeling

    from lightning_ssl.eval.finetune import Classifier
    from lightning_ssl.modules.pretrained import HFVisionBackbone, patch_features

    torch.manual_seed(0)
    mim = BeitForMaskedImageModeling(_hf_config()).eval()
    mim.save_pretrained(tmp_path)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        hidden = mim.layernorm(mim.beit(pixel_values=x).last_hidden_state)  # the features the MIM head reads
    for pooling, want in (("cls", hidden[:, 0]), ("mean", hidden[:, 1:].mean(1))):
        backbone = HFVisionBackbone(str(tmp_path), pooling=pooling, in_channels=1, image_size=16).eval()
        with torch.no_grad():
            torch.testing.assert_close(backbone(x), want)
    assert backbone.num_features == 32
    assert not hasattr(backbone.model, "lm_head")
    with torch.no_grad():
        torch.testing.assert_close(patch_features(backbone, x), hidden[:, 1:].transpose(1, 2).reshape(3, 32, 4, 4))
    # fine-tuning: a classifier step reaches the encoder; the unused [MASK] embedding is frozen
    clf = Classifier(HFVisionBackbone(str(tmp_path), in_channels=1, image_size=16), num_classes=4)
    clf.training_step((x, torch.tensor([0, 1, 2])), 0).backward()
    grads = {n: p.grad for n, p in clf.backbone.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert not clf.backbone.model.embeddings.mask_token.requires_grad


def test_hf_beit_model_loads_as_a_backbone(tmp_path):
    from transformers import BeitModel

    from lightning_ssl.modules.pretrained import HFVisionBackbone

    torch.manual_seed(0)
    config = _hf_config()
    config.use_mean_pooling = True
    model = BeitModel(config).eval()
    model.save_pretrained(tmp_path)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        out = model(pixel_values=x)
        backbone = HFVisionBackbone(str(tmp_path), pooling="pooler", in_channels=1, image_size=16).eval()
        torch.testing.assert_close(backbone(x), out.pooler_output)  # LayerNorm(mean of patch tokens), as BEiT evaluates
        torch.testing.assert_close(
            HFVisionBackbone(str(tmp_path), pooling="cls", in_channels=1, image_size=16)(x), out.last_hidden_state[:, 0]
        )
