"""The visual tokenizer: the EMA vector quantizer (formula, k-means init, dead-code restart, DDP statistics), the
VQ-VAE / VQ-KD LightningModule (learning, teacher targets, checkpoints, exact resume)."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_ssl.data import ClassifierViews, SyntheticDataModule
from lightning_ssl.methods import PatchTokenizer, VisualTokenizer
from lightning_ssl.modules.pretrained import patch_features
from lightning_ssl.modules.quantizer import VectorQuantizer, codebook_usage, kmeans
from lightning_ssl.modules.vit import ViT
from tests.helpers import run_distributed


def vit(**kw):
    return ViT(
        **{"in_channels": 1, "image_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2, **kw}
    )


def tokenizer(**kw):
    return VisualTokenizer(
        vit(), **{"num_codes": 32, "code_dim": 8, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2, **kw}
    )


# --- the quantizer ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cosine", [False, True])
def test_ema_update_follows_the_vqvae_formula(cosine):
    torch.manual_seed(0)
    q = VectorQuantizer(
        num_codes=5, code_dim=3, decay=0.9, commitment=0.25, cosine=cosine, kmeans_init=False, restart=False
    ).train()
    e0, n0, m0 = q.codebook.clone(), q.cluster_size.clone(), q.embed_sum.clone()
    z = torch.randn(2, 7, 3)
    out = q(z)
    flat = F.normalize(z.reshape(-1, 3), dim=1) if cosine else z.reshape(-1, 3)
    # nearest code by a plain loop
    ids = torch.tensor([min(range(5), key=lambda k: float(((v - e0[k]) ** 2).sum())) for v in flat])
    assert torch.equal(out.indices.flatten(), ids)
    counts = torch.tensor([float((ids == k).sum()) for k in range(5)])
    sums = torch.stack([flat[ids == k].sum(0) for k in range(5)])
    n = 0.9 * n0 + 0.1 * counts
    m = 0.9 * m0 + 0.1 * sums
    smoothed = (n + 1e-5) / (n.sum() + 5 * 1e-5) * n.sum()
    e = m / smoothed[:, None]
    e = F.normalize(e, dim=1) if cosine else e
    torch.testing.assert_close(q.cluster_size, n)
    torch.testing.assert_close(q.embed_sum, m)
    torch.testing.assert_close(q.codebook, e)
    torch.testing.assert_close(out.counts, counts)
    # commitment loss with the codebook before the update, straight-through output
    torch.testing.assert_close(out.loss, 0.25 * ((flat - e0[ids]) ** 2).mean())
    torch.testing.assert_close(out.z_q.reshape(-1, 3), e0[ids])


def test_straight_through_gradient_and_no_codebook_gradient():
    q = VectorQuantizer(num_codes=8, code_dim=4, cosine=False, kmeans_init=False).train()
    z = torch.randn(10, 4, requires_grad=True)
    out = q(z)
    (out.z_q * torch.arange(4.0)).sum().backward()
    torch.testing.assert_close(z.grad, torch.arange(4.0).expand(10, 4))  # d z_q / d z = identity
    assert not any(p.requires_grad for p in q.parameters())
    assert "codebook" in dict(q.named_buffers())


def test_no_update_in_eval_mode_or_when_tokenizing():
    q = VectorQuantizer(num_codes=8, code_dim=4).eval()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q(torch.randn(20, 4))
    q.train()
    q(torch.randn(20, 4), update=False)
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_kmeans_init_finds_the_clusters_of_the_first_batch():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [-5.0, -5.0, 0]])
    z = centres[torch.arange(400) % 4] + 0.1 * torch.randn(400, 3, generator=g)
    q = VectorQuantizer(num_codes=8, code_dim=3, cosine=False, kmeans_init=True, restart=False).train()
    random_error = ((z - q.codebook[q(z, update=False).indices]) ** 2).sum(1).mean()
    assert not bool(q.initialized)
    q(z)
    assert bool(q.initialized)
    for c in centres:  # every cluster got a code
        assert (q.codebook - c).norm(dim=1).min() < 0.1
    error = ((z - q.codebook[q(z, update=False).indices]) ** 2).sum(1).mean()
    assert error < 0.05 * random_error
    torch.testing.assert_close(q.cluster_size.sum(), torch.tensor(400.0))  # k-means counts, then one EMA step


def test_kmeans_is_lloyds_algorithm_from_the_seeded_rows():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 2, generator=g)
    centroids, counts = kmeans(x, 5, iters=4, generator=torch.Generator().manual_seed(3))
    c = x[torch.randperm(60, generator=torch.Generator().manual_seed(3))[:5]].clone()
    for _ in range(4):  # plain Lloyd: assign to the nearest centroid, move each centroid to its cluster's mean
        assign = torch.tensor([min(range(5), key=lambda k: float(((v - c[k]) ** 2).sum())) for v in x])
        c = torch.stack([x[assign == k].mean(0) if (assign == k).any() else c[k] for k in range(5)])
    torch.testing.assert_close(centroids, c)
    assert counts.tolist() == [float((assign == k).sum()) for k in range(5)]
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    centroids, counts = kmeans(x, 2, iters=3, generator=torch.Generator().manual_seed(0))
    assert sorted(centroids.flatten().tolist()) == [0.5, 10.5]
    assert counts.tolist() == [2.0, 2.0]


def test_codebook_usage_and_perplexity_hand_computed():
    usage, perplexity = codebook_usage(torch.tensor([2.0, 2.0, 0.0, 0.0]))
    assert usage == 0.5
    assert perplexity == pytest.approx(2.0)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert codebook_usage(torch.tensor([2.0, 1.0, 1.0]))[1] == pytest.approx(float(torch.exp(-(p * p.log()).sum())))


def _collapsed(restart: bool) -> VectorQuantizer:
    q = VectorQuantizer(num_codes=16, code_dim=4, cosine=True, kmeans_init=False, restart=restart, dead_threshold=1.0)
    with torch.no_grad():  # one code among the data (the positive orthant), 15 on the far side of the sphere
        codes = torch.cat([torch.ones(1, 4), -torch.ones(15, 4) + 0.1 * torch.randn(15, 4)])
        q.codebook.copy_(F.normalize(codes, dim=1))
        q.embed_sum.copy_(q.codebook)
    return q.train()


def test_dead_code_restart_raises_usage_of_a_collapsed_codebook():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(256, 4, generator=g).abs() for _ in range(30)]
    held_out = torch.randn(2000, 4, generator=g).abs()
    usage = {}
    for restart in (False, True):
        q = _collapsed(restart)
        before = codebook_usage(q(held_out, update=False).counts)[0]
        for z in batches:
            q(z)
        usage[restart] = codebook_usage(q(held_out, update=False).counts)[0]
        assert before == 1 / 16
    assert usage[False] == 1 / 16  # EMA alone keeps the collapse
    assert usage[True] >= 0.9
    assert int(_restarted(batches)) > 0


def _restarted(batches):
    q = _collapsed(True)
    for z in batches[:3]:
        q(z)
    return q.restarted


def _ddp_quantizer(rank, world, batches):
    q = VectorQuantizer(num_codes=12, code_dim=3, decay=0.8, cosine=True, kmeans_init=True, dead_threshold=3.0).train()
    n = batches[0].shape[0] // world
    for z in batches:
        q(z[rank * n : (rank + 1) * n])
    return {k: v.clone() for k, v in q.state_dict().items()}


def test_ddp_codebook_statistics_equal_one_process_with_the_whole_batch():
    """k-means init, EMA cluster sizes and sums, codebook and restarts: 2 gloo processes with half of each batch
    each end with the state of one process that saw every batch whole, on both ranks."""
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(40, 3, generator=g) * torch.tensor([3.0, 1.0, 0.2]) for _ in range(4)]
    ref = _ddp_quantizer(0, 1, batches)
    assert int(ref["restarted"]) > 0, "the case should exercise restarts"
    for state in run_distributed(_ddp_quantizer, batches):
        for k in ref:
            torch.testing.assert_close(state[k], ref[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


# --- the LightningModule ------------------------------------------------------------------------------------
def _blocky(n: int, g: torch.Generator) -> torch.Tensor:
    """Images of random 4x4 blocks of 3 grey levels: a codebook can describe them exactly."""
    levels = torch.tensor([-1.0, 0.0, 1.0])
    blocks = levels[torch.randint(0, 3, (n, 1, 4, 4), generator=g)]
    return F.interpolate(blocks, scale_factor=4, mode="nearest")


def test_tokenizer_training_lowers_reconstruction_error():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = tokenizer(num_codes=16, commitment=0.25).train()
    x_val = _blocky(16, g)
    opt = torch.optim.AdamW([p for m in model.trainable_modules() for p in m.parameters()], lr=3e-3)
    with torch.no_grad():
        before = model.forward_tokenizer(x_val, update=False)["rec_loss"].item()
    for _ in range(30):
        out = model.forward_tokenizer(_blocky(16, g))
        opt.zero_grad()
        (out["rec_loss"] + out["commit_loss"]).backward()
        opt.step()
    with torch.no_grad():
        after = model.forward_tokenizer(x_val, update=False)["rec_loss"].item()
    assert after < 0.5 * before, (before, after)


def test_tokenize_gives_one_id_per_patch_and_never_updates():
    model = tokenizer().train()
    before = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    ids = model.tokenize(torch.randn(3, 1, 16, 16))
    assert ids.shape == (3, 4, 4)
    assert ids.dtype == torch.long
    assert int(ids.max()) < 32
    assert all(torch.equal(v, before[k]) for k, v in model.quantizer.state_dict().items())


def test_vqkd_reconstructs_the_teachers_patch_features():
    torch.manual_seed(0)
    teacher = vit(embed_dim=24, patch_size=8)  # a 2x2 grid: resized to the tokenizer's 4x4
    model = tokenizer(teacher=teacher).train()
    x = torch.randn(4, 1, 16, 16)
    out = model.forward_tokenizer(x)
    fmap = teacher.forward_tokens(x)[:, 1:].transpose(1, 2).reshape(4, 24, 2, 2)
    want = F.interpolate(fmap, size=(4, 4), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out["target"], want)
    torch.testing.assert_close(out["rec_loss"], (1 - F.cosine_similarity(out["rec"], want, dim=-1)).mean())
    (out["rec_loss"] + out["commit_loss"]).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    torch.testing.assert_close(patch_features(teacher, x), fmap)


def _data():
    return SyntheticDataModule(
        num_samples=32,
        batch_size=8,
        num_workers=0,
        image_size=16,
        channels=1,
        num_classes=4,
        views=ClassifierViews(min_scale=0.5),
        batch_augment=True,
    )


def _trainer(tmp_path, **kw):
    kw = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        **kw,
    }
    return L.Trainer(default_root_dir=tmp_path, **kw)


def _resumable():
    torch.manual_seed(0)
    return tokenizer(num_codes=16, dead_threshold=2.0, teacher=vit(embed_dim=8))


def test_exact_resume_of_the_tokenizer(tmp_path):
    """8 steps straight == 6 steps, a checkpoint, and 2 more: weights, optimizer-driven parts and the EMA codebook
    state (codebook, cluster sizes, sums, update and restart counters) all equal. The teacher is not stored."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    straight = _resumable()
    ckpt = ModelCheckpoint(
        dirpath=tmp_path, filename="step{step}", every_n_train_steps=6, save_top_k=-1, auto_insert_metric_name=False
    )
    _trainer(tmp_path, max_steps=8, enable_checkpointing=True, callbacks=[ckpt]).fit(straight, datamodule=_data())
    stored = torch.load(tmp_path / "step6.ckpt", weights_only=True)["state_dict"]
    assert "quantizer.cluster_size" in stored
    assert not any(k.startswith("teacher.") for k in stored)
    resumed = _resumable()
    t2 = _trainer(tmp_path, max_steps=8)
    t2.fit(resumed, datamodule=_data(), ckpt_path=tmp_path / "step6.ckpt", weights_only=True)
    assert t2.global_step == 8
    assert int(resumed.quantizer.updates) == 8
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k} differs after resume: {m}")


def test_patch_tokenizer_from_checkpoint_drops_decoder_and_teacher(tmp_path):
    torch.manual_seed(0)
    model = tokenizer(teacher=vit(embed_dim=8)).train()
    model.forward_tokenizer(torch.randn(8, 1, 16, 16))  # k-means init moves the codebook
    path = tmp_path / "tok.ckpt"
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("teacher.")}
    backbone_cfg = {
        "class_path": "lightning_ssl.modules.vit.ViT",
        "init_args": {"in_channels": 1, "image_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2},
    }
    torch.save({"state_dict": sd, "hyper_parameters": {**model.hparams, "backbone": backbone_cfg}}, path)
    tok = PatchTokenizer.from_checkpoint(str(path))
    assert isinstance(tok, PatchTokenizer)
    assert not tok.training
    assert {n.split(".")[0] for n, _ in tok.named_children()} == {"backbone", "to_code", "quantizer"}
    x = torch.randn(5, 1, 16, 16)
    model.eval()
    assert torch.equal(tok.tokenize(x), model.tokenize(x))


def test_reconstruction_callback_writes_original_reconstruction_and_token_grid(tmp_path):
    from PIL import Image

    from lightning_ssl.callbacks import TokenizerReconstructionLogger
    from lightning_ssl.callbacks.images import token_colours

    cb = TokenizerReconstructionLogger(num_images=3, every_n_epochs=1, out_dir=str(tmp_path / "img"))
    torch.manual_seed(0)
    _trainer(tmp_path, max_steps=2, callbacks=[cb]).fit(tokenizer(), datamodule=_data())
    assert cb.last_path is not None
    assert cb.last_path.exists()
    with Image.open(cb.last_path) as im:  # 3 columns (original | reconstruction | tokens) x 3 rows of 16 px,
        assert min(im.size) >= 3 * 96  # enlarged and labelled
    ids = torch.tensor([[[0, 1], [1, 0]]])
    colours = token_colours(ids, 4)
    assert colours.shape == (1, 3, 2, 2)
    assert torch.equal(colours[0, :, 0, 0], colours[0, :, 1, 1])
    assert not torch.equal(colours[0, :, 0, 0], colours[0, :, 0, 1])


def test_norm_ema_update_follows_beit_v2():
    """microsoft/unilm beit2/norm_ema_quantizer.py NormEMAVectorQuantizer.forward, transcribed: for codes the batch
    uses, weight <- l2norm(decay * weight + (1 - decay) * l2norm(sum of their vectors / count)); unused codes keep
    their weight; cluster_size <- decay * cluster_size + (1 - decay) * bins."""
    torch.manual_seed(0)
    q = VectorQuantizer(
        num_codes=6, code_dim=3, decay=0.9, cosine=True, kmeans_init=False, restart=False, update_rule="norm_ema"
    ).train()
    weight, cluster_size = q.codebook.clone(), q.cluster_size.clone()
    z = torch.randn(2, 5, 3)
    out = q(z)
    z_flat = F.normalize(z.reshape(-1, 3), dim=1)
    d = z_flat.pow(2).sum(1, keepdim=True) + weight.pow(2).sum(1) - 2 * z_flat @ weight.t()
    encodings = F.one_hot(d.argmin(1), 6).float()
    assert torch.equal(out.indices.flatten(), d.argmin(1))
    bins = encodings.sum(0)
    expected_size = 0.9 * cluster_size + 0.1 * bins
    zero_mask = bins == 0
    embed_normalized = F.normalize((z_flat.t() @ encodings / bins.masked_fill(zero_mask, 1.0)[None]).t(), dim=1)
    embed_normalized = torch.where(zero_mask[:, None], weight, embed_normalized)
    expected = F.normalize(0.9 * weight + 0.1 * embed_normalized, dim=1)
    assert zero_mask.any()  # the check covers an unused code too
    torch.testing.assert_close(q.codebook, expected)
    torch.testing.assert_close(q.cluster_size, expected_size)


def test_norm_ema_needs_cosine_codes():
    with pytest.raises(ValueError, match="cosine=True"):
        VectorQuantizer(num_codes=4, code_dim=2, cosine=False, update_rule="norm_ema")
    with pytest.raises(ValueError, match="update_rule"):
        VectorQuantizer(num_codes=4, code_dim=2, update_rule="vqgan")
