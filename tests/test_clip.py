"""CLIP: loss (hand-computed, DDP equivalence), logit scale, tokenizer and text tower, zero-shot and retrieval,
the image-text datamodule, and a tiny end-to-end fit."""

import csv
import json
import math
from typing import ClassVar

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_ssl.callbacks import CLIPEmbeddingPlot
from lightning_ssl.checkpoint import safe_load
from lightning_ssl.data import ImageTextDataModule
from lightning_ssl.losses import CLIPLoss, clip_logits, clip_loss, info_nce_loss
from lightning_ssl.methods import CLIP
from lightning_ssl.metrics.zeroshot import recall_at_k, retrieve, zero_shot_accuracy, zero_shot_classify
from lightning_ssl.modules.backbones import SmallCNN
from lightning_ssl.modules.text import BPETokenizer, TextTransformer
from tests.helpers import run_distributed


# --- loss ------------------------------------------------------------------------------------------------------
def test_clip_loss_hand_computed():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # normalized: (1, 0) and (1, 1)/sqrt(2)
    r = 1 / math.sqrt(2)
    s = 2.0
    ce = lambda logits, target: -math.log(math.exp(logits[target]) / sum(math.exp(v) for v in logits))  # noqa: E731
    image_to_text = (ce([s * 1, s * r], 0) + ce([s * 0, s * r], 1)) / 2
    text_to_image = (ce([s * 1, s * 0], 0) + ce([s * r, s * r], 1)) / 2  # the last one is log 2
    expected = (image_to_text + text_to_image) / 2
    for local in (True, False):
        assert clip_loss(image, text, s, local_loss=local).item() == pytest.approx(expected, abs=1e-6)
    assert clip_loss(image, text, torch.tensor(s)).item() == pytest.approx(expected, abs=1e-6)
    assert CLIPLoss(temperature=1 / s)(image, text).item() == pytest.approx(expected, abs=1e-6)


def test_clip_loss_is_two_info_nce_and_symmetric():
    i, t = torch.randn(6, 5), torch.randn(6, 5)
    both = (info_nce_loss(i, t, 1 / 10) + info_nce_loss(t, i, 1 / 10)) / 2
    assert clip_loss(i, t, 10.0).item() == pytest.approx(both.item(), rel=1e-6)
    assert clip_loss(i, t, 10.0).item() == pytest.approx(clip_loss(t, i, 10.0).item(), rel=1e-6)
    aligned = clip_loss(i, i + 0.01 * torch.randn(6, 5), 10.0).item()
    assert aligned < clip_loss(i, t, 10.0).item() - 1.0
    with pytest.raises(ValueError, match="logit_scale must be > 0"):
        clip_loss(i, t, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(i, t[:4], 10.0)


def test_logit_scale_init_and_clamp():
    loss = CLIPLoss()
    assert loss.log_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert loss.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        loss.log_scale.fill_(math.log(1000.0))
    assert loss.scale().item() == pytest.approx(100.0)  # clamped in the forward pass ...
    i, t = torch.randn(4, 3), torch.randn(4, 3)
    loss(i, t).backward()
    assert loss.log_scale.grad.item() == 0.0  # ... where it gets no gradient
    loss.clamp_()  # ... and the parameter itself is pulled back (CLIP does this after each optimizer step)
    assert loss.log_scale.item() == pytest.approx(math.log(100.0))
    assert not CLIPLoss(learnable=False).log_scale.requires_grad


# --- real 2-process DDP (gloo): gathered features with gradients, local and global logits -----------------------
def _ddp_clip(rank, world_size, xi, xt, wi, wt, t, local_loss, gather_distributed):
    import torch.distributed as dist

    wi, wt, t = (p.clone().requires_grad_(True) for p in (wi, wt, t))
    n = xi.shape[0] // world_size
    sl = slice(rank * n, (rank + 1) * n)
    img, txt = xi[sl] @ wi, xt[sl] @ wt
    per_image, _, _ = clip_logits(img, txt, t.exp(), local_loss, gather_distributed)
    loss = clip_loss(img, txt, t.exp(), local_loss, gather_distributed)
    loss.backward()
    grads = []
    for p in (wi, wt, t):  # what DDP does to parameter gradients: average over processes
        dist.all_reduce(p.grad)
        grads.append(p.grad / world_size)
    total = loss.detach().clone()
    dist.all_reduce(total)
    return (total / world_size).item(), grads, tuple(per_image.shape)


@pytest.mark.parametrize("local_loss", [True, False])
def test_ddp_gradients_equal_one_process_with_the_whole_batch(local_loss):
    xi, xt = torch.randn(8, 6), torch.randn(8, 5)
    wi, wt, t = torch.randn(6, 4), torch.randn(5, 4), torch.tensor(math.log(1 / 0.07))
    params = [p.clone().requires_grad_(True) for p in (wi, wt, t)]
    full = clip_loss(xi @ params[0], xt @ params[1], params[2].exp())
    full.backward()
    results = run_distributed(_ddp_clip, xi, xt, wi, wt, t, local_loss, True)
    for loss, grads, shape in results:
        assert loss == pytest.approx(full.item(), rel=1e-5)
        for g, p in zip(grads, params, strict=True):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)
        # local loss: this process's 4 rows against all 8 columns (linear); global: the whole 8 x 8 matrix
        assert shape == ((4, 8) if local_loss else (8, 8))


def test_ddp_without_gather_is_a_different_loss():
    """Guards the test above: without the gather each process only sees its own 4 pairs."""
    xi, xt = torch.randn(8, 6), torch.randn(8, 5)
    wi, wt, t = torch.randn(6, 4), torch.randn(5, 4), torch.tensor(2.0)
    results = run_distributed(_ddp_clip, xi, xt, wi, wt, t, True, False)
    assert results[0][0] != pytest.approx(clip_loss(xi @ wi, xt @ wt, t.exp()).item(), rel=1e-3)
    assert results[0][2] == (4, 4)


# --- tokenizer and text tower ------------------------------------------------------------------------------------
CAPTIONS = ["dog face", "cat face", "red heart", "flag: Croatia", "grinning face with big eyes", "hot beverage"] * 3


def test_tokenizer_round_trip(tmp_path):
    tok = BPETokenizer.train(CAPTIONS, vocab_size=300, min_frequency=1)
    ids = tok.encode(["dog face", "flag: Croatia"], context_length=12)
    assert ids.shape == (2, 12)
    assert ids.dtype == torch.long
    assert ids[0, 0] == tok.sot_id
    assert (ids[0] == tok.eot_id).sum() == 1
    assert ids[0, -1] == tok.pad_id == 0
    assert tok.decode(ids[0]) == "dog face"
    assert tok.decode(ids[1]) == "flag: croatia"
    cased = BPETokenizer.train(CAPTIONS, vocab_size=300, min_frequency=1, lowercase=False)
    text = "Zürich naïve 🐶 face, never seen!"  # unseen words and characters: byte-level, no unknown token
    assert cased.decode(cased.encode([text], 64)[0]) == text
    long = tok.encode(["grinning face with big eyes " * 10], context_length=8)[0]
    assert long[0] == tok.sot_id
    assert long[-1] == tok.eot_id
    assert (long != 0).all()
    again = BPETokenizer.load(tok.save(tmp_path / "tok.json"))
    assert torch.equal(again.encode(CAPTIONS, 16), tok.encode(CAPTIONS, 16))


@pytest.mark.parametrize(("causal", "pooling"), [(True, "eot"), (False, "mean")])
def test_text_transformer_ignores_padding_and_saves_its_tokenizer(causal, pooling, tmp_path):
    enc = TextTransformer(
        vocab_size=512, width=32, layers=2, heads=4, context_length=16, causal=causal, pooling=pooling
    )
    with pytest.raises(RuntimeError, match="no tokenizer"):
        enc(["dog face"])
    enc.fit_tokenizer(CAPTIONS)
    enc.eval()
    alone = enc(["dog face"])
    padded = enc(["dog face", "grinning face with big eyes and more words"])[:1]  # more padding on row 0
    torch.testing.assert_close(alone, padded, rtol=1e-4, atol=1e-5)
    assert alone.shape == (1, 32)
    torch.save(enc.state_dict(), tmp_path / "text.pt")
    fresh = TextTransformer(
        vocab_size=512, width=32, layers=2, heads=4, context_length=16, causal=causal, pooling=pooling
    )
    fresh.load_state_dict(torch.load(tmp_path / "text.pt", weights_only=True))
    fresh.eval()
    torch.testing.assert_close(fresh(["dog face"]), alone)
    with pytest.raises(ValueError, match="more than the embedding table"):
        TextTransformer(vocab_size=8, width=32, heads=4).set_tokenizer(enc.tokenizer)


# --- zero-shot and retrieval ---------------------------------------------------------------------------------------
class Separable(nn.Module):
    """Images are (C, 1, 1) 'pictures' whose channel c is bright for class c; a text is one-hot on the class word it
    contains. Its embeddings separate the classes by construction."""

    classes: ClassVar[list[str]] = ["cat", "dog", "car"]

    def encode_image(self, x):
        return x.flatten(1)

    def encode_text(self, texts):
        return torch.stack([torch.tensor([float(c in t.split()) for c in self.classes]) for t in texts])


def test_zero_shot_on_separable_embeddings_is_perfect():
    labels = torch.arange(3).repeat(10)
    images = (torch.nn.functional.one_hot(labels, 3).float() + 0.3 * torch.rand(30, 3)).view(30, 3, 1, 1)
    probs = zero_shot_classify(Separable(), images, Separable.classes, ["a photo of a {} .", "{}"])
    assert probs.shape == (30, 3)
    assert torch.allclose(probs.sum(1), torch.ones(30))
    assert torch.equal(probs.argmax(1), labels)
    assert zero_shot_accuracy(Separable(), images, labels, Separable.classes, ["a {} here"], topk=(1, 5)) == {1: 1.0}
    shuffled = zero_shot_accuracy(Separable(), images, labels, ["dog", "car", "cat"], ["{}"])
    assert shuffled[1] == 0.0  # wrong names: every image goes to the wrong class


def test_recall_on_identical_pairs_is_one():
    x = torch.randn(50, 16)
    assert recall_at_k(x, x.clone(), (1, 5, 10)) == {1: 1.0, 5: 1.0, 10: 1.0}
    reversed_pairs = recall_at_k(x, x.flip(0), (1, 5, 10))  # every query's own target is some other vector
    assert reversed_pairs[1] < 0.1
    assert reversed_pairs[10] < 0.6
    ties = recall_at_k(torch.ones(4, 2), torch.ones(4, 2), (1,))
    assert ties == {1: 1.0}


def test_retrieve_finds_the_matching_images():
    images = torch.eye(3).repeat(2, 1).view(6, 3, 1, 1)  # cat, dog, car, cat, dog, car
    scores, idx = retrieve(Separable(), "a dog", k=2, images=images)
    assert sorted(idx.tolist()) == [1, 4]
    assert scores.shape == (2,)
    scores, idx = retrieve(Separable(), ["a car", "a cat"], k=1, images=images)
    assert idx.shape == (2, 1)
    assert idx[0, 0] % 3 == 2
    assert idx[1, 0] % 3 == 0
    with pytest.raises(ValueError, match="needs images"):
        retrieve(Separable(), "a dog")


# --- data -------------------------------------------------------------------------------------------------------
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220)}
SHAPES = ("square", "circle")


def write_pairs(folder, per_pair=3, jsonl=False, labels=True):
    """Small PNGs of coloured shapes with captions ("a red circle") and the colour as label."""
    from PIL import Image, ImageDraw

    rows = []
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            for k in range(per_pair):
                im = Image.new("RGB", (20 + 2 * k, 20 + 2 * k), "white")
                box = (3 + k, 3 + k, 16 + k, 16 + k)
                (ImageDraw.Draw(im).ellipse if shape == "circle" else ImageDraw.Draw(im).rectangle)(box, fill=rgb)
                name = f"img/{colour}_{shape}_{k}.png"
                (folder / "img").mkdir(exist_ok=True)
                im.save(folder / name)
                rows.append({"image": name, "caption": f"a {colour} {shape}", **({"label": colour} if labels else {})})
    path = folder / ("pairs.jsonl" if jsonl else "pairs.csv")
    if jsonl:
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader(), w.writerows(rows)
    return path


def test_image_text_datamodule_from_csv(tmp_path):
    path = write_pairs(tmp_path)
    dm = ImageTextDataModule(
        source=str(path),
        image_size=16,
        batch_size=4,
        num_workers=0,
        caption_templates=["{caption}", "a picture of {caption}"],
        test_fraction=0.25,
    )
    dm.setup("fit")
    assert dm.class_names == ["blue", "green", "red"]
    assert dm.num_classes == 3
    assert len(dm.train_set) + len(dm.val_set) == 18
    assert len(dm.val_set) == 6
    images, labels, captions = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16)
    assert labels.shape == (4,)
    assert len(captions) == 4
    assert all(c.split()[-2] == dm.class_names[y] for c, y in zip(captions, labels.tolist(), strict=True))
    val, _bank = dm.val_dataloader()
    images, labels, captions = next(iter(val))
    assert images.shape[1:] == (3, 16, 16)
    assert all(c.startswith("a ") for c in captions)
    assert len(dm.train_captions()) == 2 * len(dm.train_set)
    images, labels = dm.evaluation_tensors()  # the held-out images, without their captions
    assert images.shape == (6, 3, 16, 16)
    assert labels.tolist() == [dm.val_set.labels[i] for i in range(6)]


def test_image_text_datamodule_unlabelled_jsonl_and_errors(tmp_path):
    path = write_pairs(tmp_path, jsonl=True, labels=False)
    dm = ImageTextDataModule(source=str(path), image_size=16, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes is None
    assert len(dm.val_dataloader()) == 1
    assert (torch.tensor(dm.val_set.labels) == -1).all()
    (tmp_path / "img" / "red_square_0.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"red_square_0\.png"):
        ImageTextDataModule(source=str(path)).prepare_data()
    bad = tmp_path / "bad.csv"
    bad.write_text("file,text\na.png,hello\n")
    with pytest.raises(ValueError, match="needs a 'image' column"):
        ImageTextDataModule(source=str(bad)).prepare_data()
    dm = ImageTextDataModule(source=str(write_pairs(tmp_path)), caption_templates=["{colour}"], num_workers=0)
    dm.setup("fit")
    with pytest.raises(KeyError, match="'colour'"):
        dm.train_captions()


def test_emoji_source_uses_names_groups_and_templates(tmp_path, monkeypatch):
    import lightning_ssl.data.image_text as image_text

    groups = ["Animals & Nature", "Food & Drink", "Flags"]
    fake = {
        "images": torch.randint(0, 255, (30, 3, 64, 64), dtype=torch.uint8),
        "names": [f"thing {i}" for i in range(30)],
        "groups": [groups[i % 3] for i in range(30)],
        "subgroups": [f"sub-{i % 6}" for i in range(30)],
        "chars": ["x"] * 30,
    }
    monkeypatch.setattr(image_text, "load_emoji", lambda *a, **k: fake)
    dm = ImageTextDataModule(root=str(tmp_path), image_size=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert dm.class_names == sorted(groups)
    assert dm.num_classes == 3
    caps = dm.train_captions()
    assert "an emoji of thing 0" in caps
    assert "thing 0, a Animals & Nature emoji" in caps
    assert "a sub 0 emoji: thing 0" in caps
    assert dm.val_set.labels
    assert {f["name"] for f in dm.val_set.fields}.isdisjoint(f["name"] for f in dm.train_set.fields)
    sub = ImageTextDataModule(root=str(tmp_path), label="subgroup", num_workers=0)
    sub.setup("fit")
    assert sub.class_names == [f"sub {i}" for i in range(6)]
    with pytest.raises(ValueError, match="'group' or 'subgroup'"):
        ImageTextDataModule(label="colour")


# --- the LightningModule ----------------------------------------------------------------------------------------
def tiny_clip(**kwargs):
    return CLIP(
        SmallCNN(3, 16, width=8, stages=2),
        TextTransformer(vocab_size=300, width=32, layers=1, heads=2, context_length=12),
        embed_dim=16,
        **kwargs,
    )


def test_fit_logs_zero_shot_and_recall_and_reloads(tmp_path):
    dm = ImageTextDataModule(
        source=str(write_pairs(tmp_path)), image_size=16, batch_size=6, num_workers=0, test_fraction=0.34
    )
    model = tiny_clip(optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    with torch.no_grad():
        model.criterion.log_scale.fill_(6.0)  # above ln(100): must be clamped after the optimizer steps
    plot = CLIPEmbeddingPlot(every_n_epochs=2)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=CSVLogger(tmp_path),
        default_root_dir=tmp_path,
        callbacks=[plot],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, dm)
    m = trainer.callback_metrics
    for key in ("val/zeroshot_top1", "val/i2t_recall@1", "val/i2t_recall@10", "val/t2i_recall@5", "train/logit_scale"):
        assert key in m, key
    assert 0 <= m["val/zeroshot_top1"] <= 1
    assert m["val/i2t_recall@10"] == 1.0
    assert model.criterion.log_scale.item() <= math.log(100) + 1e-6
    assert model.logit_scale.item() <= 100
    assert plot.last_path is not None
    assert plot.last_path.exists()
    assert (tmp_path / "tokenizer.json").exists() or any(tmp_path.rglob("tokenizer.json"))

    ckpt = next(tmp_path.rglob("*.ckpt"))
    assert safe_load(ckpt)["state_dict"]["text_encoder._extra_state"].dtype == torch.uint8
    fresh = CLIP.load_from_checkpoint(
        ckpt,
        weights_only=True,
        backbone=SmallCNN(3, 16, width=8, stages=2),
        text_encoder=TextTransformer(vocab_size=300, width=32, layers=1, heads=2, context_length=12),
    )
    model.eval(), fresh.eval()
    texts = ["a red circle", "a blue square"]
    torch.testing.assert_close(fresh.encode_text(texts), model.encode_text(texts))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fresh.encode_image(x), model.encode_image(x))
    assert model.embed(x).shape == (2, model.num_features)  # the backbone features, for kNN / probes


def test_lock_text_trains_only_the_projection(tmp_path):
    dm = ImageTextDataModule(source=str(write_pairs(tmp_path)), image_size=16, batch_size=6, num_workers=0)
    model = tiny_clip(lock_text=True)
    model.text_encoder.fit_tokenizer([*CAPTIONS, "a red circle"])
    before = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    proj = model.text_proj.weight.detach().clone()
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, dm)
    model.train()
    assert not model.text_encoder.training
    assert model.image_proj.training
    for k, v in model.text_encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(model.text_proj.weight, proj)
    assert "train/loss" in trainer.callback_metrics
    model.eval()
    cached = model.text_features(["a red circle", "a blue square"])  # the locked tower's features are cached
    assert "a red circle" in model._text_cache
    model.cache_locked_text = False
    torch.testing.assert_close(model.text_features(["a red circle", "a blue square"]), cached)
