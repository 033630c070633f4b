"""Streaming datasets (lightning_ssl.data.streaming, litdata): optimize a folder or an image-text table once,
stream it deterministically, sharded over processes, resumable mid-epoch; bad input is named and nothing
already written is lost."""

from __future__ import annotations

import functools
import json
import operator
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import tomllib
import torch
from PIL import Image

from lightning_ssl.data import SimCLRViews, StreamingImageDataModule, optimize_images
from lightning_ssl.data.cli import main as data_cli
from lightning_ssl.data.streaming import check_chunks
from tests.helpers import run_distributed

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("ant", "bee", "cat", "dog")


def _folder(root: Path, per_class: int = 12, classes=CLASSES) -> Path:
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = int(rng.integers(20, 48)), int(rng.integers(20, 48))
            img = np.clip(rng.normal(60 * k, 30, (h, w, 3)), 0, 255).astype(np.uint8)  # class k: mean 60 k
            Image.fromarray(img).save(root / c / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def chunks(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("stream")
    optimize_images(
        str(_folder(base / "images")), str(base / "chunks"), chunk_bytes="12KB", num_workers=2, verbose=False
    )
    optimize_images(str(_folder(base / "val", per_class=3)), str(base / "val_chunks"), num_workers=1, verbose=False)
    return base


def _dm(base: Path, **kw) -> StreamingImageDataModule:
    kw = {
        "input_dir": str(base / "chunks"),
        "image_size": 16,
        "batch_size": 4,
        "num_workers": 0,
        "batch_augment": True,
        "views": SimCLRViews(min_scale=0.5, blur_prob=0.0),
        "val_bank_size": 16,
        **kw,
    }
    return StreamingImageDataModule(**kw)


def _epoch(loader) -> list[list[int]]:
    return [b["index"].tolist() for b in loader]


def test_optimize_writes_mixed_chunks_and_metadata(chunks):
    index = check_chunks(str(chunks / "chunks"))
    meta = json.loads((chunks / "chunks" / "lightning_ssl.json").read_text())
    assert meta["num_items"] == 48
    assert meta["classes"] == list(CLASSES)
    assert not meta["captions"]
    assert len(index["chunks"]) >= 4
    assert sum(c["chunk_size"] for c in index["chunks"]) == 48
    dm = _dm(chunks)
    assert dm.num_classes == 4
    assert StreamingImageDataModule.describe({"input_dir": str(chunks / "chunks")})["num_classes"] == 4
    from litdata import StreamingDataset

    stored = StreamingDataset(str(chunks / "chunks"))
    first = [stored[i]["label"] for i in range(12)]  # the first chunk or two
    assert len(set(first)) > 1  # the folder is class-sorted; the chunks are not
    assert not list(chunks.glob(".chunks.partial-*"))  # the temporary folder is gone


def test_stream_is_deterministic_and_each_epoch_is_a_new_order(chunks):
    a, b = _dm(chunks), _dm(chunks)
    for d in (a, b):
        d.setup("fit")
    la, lb = a.train_dataloader(), b.train_dataloader()
    e1a, e1b = _epoch(la), _epoch(lb)
    assert e1a == e1b
    assert len(e1a) == len(la) == 12
    assert sorted(functools.reduce(operator.iadd, e1a, [])) == list(range(48))  # every item once per epoch
    assert _epoch(la) != e1a  # epoch 2: another order
    batch = next(iter(la))
    assert batch["image"].shape == (4, 3, 18, 18)
    assert batch["size"].shape == (4, 2)


def test_resume_mid_epoch_restores_the_stream_position(chunks):
    """state_dict after 5 of 12 batches (2 workers), loaded into a fresh datamodule's loader: the remaining
    batches are exactly those of the uninterrupted epoch, images included."""
    straight = _dm(chunks, num_workers=2)
    straight.setup("fit")
    full = [(b["index"].tolist(), b["image"]) for b in straight.train_dataloader()]
    first = _dm(chunks, num_workers=2)
    first.setup("fit")
    loader = first.train_dataloader()
    it = iter(loader)
    head = [next(it) for _ in range(5)]
    state = loader.state_dict()
    del it
    resumed = _dm(chunks, num_workers=2)
    resumed.setup("fit")
    loader2 = resumed.train_dataloader()
    loader2.load_state_dict(state)
    rest = [(b["index"].tolist(), b["image"]) for b in loader2]
    got = [b["index"].tolist() for b in head] + [i for i, _ in rest]
    assert got == [i for i, _ in full]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(rest, full[5:], strict=True))


@pytest.mark.parametrize("stop_at", [4, 6], ids=["mid-epoch", "epoch-end"])
def test_lightning_resume_is_exact(chunks, tmp_path, stop_at):
    """A fit resumed from a checkpoint ends with the weights of an uninterrupted fit, also from the middle of an
    epoch: Lightning saves the StreamingDataLoader's state in the checkpoint, the datamodule reseeds the device
    augmentation, and the epochs after the resumed one are whole."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_ssl.methods import SimCLR
    from lightning_ssl.modules.backbones import SmallCNN

    def model():
        torch.manual_seed(0)
        return SimCLR(SmallCNN(in_channels=3, image_size=16, width=4), proj_hidden_dim=16, proj_dim=8)

    kw = dict(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        max_epochs=2,
        default_root_dir=tmp_path,
    )
    # 48 items, batch 8: 6 batches per epoch
    straight = model()
    ckpt = ModelCheckpoint(
        dirpath=tmp_path,
        filename="step{step}",
        every_n_train_steps=stop_at,
        save_top_k=-1,
        auto_insert_metric_name=False,
    )
    L.Trainer(callbacks=[ckpt], **kw).fit(straight, datamodule=_dm(chunks, batch_size=8))
    resumed = model()
    t = L.Trainer(enable_checkpointing=False, **kw)
    t.fit(resumed, datamodule=_dm(chunks, batch_size=8), ckpt_path=tmp_path / f"step{stop_at}.ckpt", weights_only=True)
    assert t.global_step == 12
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def _shard(rank, world_size, base):
    dm = _dm(Path(base))
    dm.setup("fit")
    loader = dm.train_dataloader()
    return len(loader), _epoch(loader)


def test_ddp_ranks_get_disjoint_equal_shards(chunks):
    (n0, e0), (n1, e1) = run_distributed(_shard, str(chunks))
    a, b = functools.reduce(operator.iadd, e0, []), functools.reduce(operator.iadd, e1, [])
    assert n0 == n1 == len(e0) == len(e1) > 0  # equal batch counts: no rank waits in a collective
    assert not set(a) & set(b)
    assert len(a) == len(set(a))
    assert len(a) + len(b) >= 48 - 2 * 4 * 2  # drop_last drops at most a batch per rank and chunk boundary


def test_evaluation_sets_and_labels(chunks):
    dm = _dm(chunks, val_dir=str(chunks / "val_chunks"))
    dm.setup("fit")
    val, bank = dm.val_dataloader()
    assert len(val.dataset) == 12
    assert len(bank.dataset) == 16
    x, y = next(iter(val))
    assert x.dtype == torch.uint8
    assert x.shape == (4, 3, 16, 16)
    assert set(y.tolist()) <= set(range(4))
    # per-image views in the workers (batch_augment off): seeded by (seed, epoch, index)
    per_image = _dm(chunks, batch_augment=False)
    per_image.setup("fit")
    views, _labels = next(iter(per_image.train_dataloader()))
    assert len(views) == 2
    assert views[0].shape == (4, 3, 16, 16)
    assert views[0].dtype == torch.float32
    again = _dm(chunks, batch_augment=False)
    again.setup("fit")
    torch.testing.assert_close(next(iter(again.train_dataloader()))[0][1], views[1])


def test_image_text_table_streams_captions(tmp_path):
    rows = ["image,caption,label"]
    for i in range(12):
        colour = ("red", "blue")[i % 2]
        Image.new("RGB", (20 + i, 24), colour).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,a {colour} square number {i},{colour}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows))
    meta = optimize_images(str(tmp_path / "pairs.csv"), str(tmp_path / "chunks"), num_workers=1, verbose=False)
    assert (meta["captions"] and meta["classes"] == ["red", "blue"]) or meta["classes"] == ["blue", "red"]
    dm = StreamingImageDataModule(
        input_dir=str(tmp_path / "chunks"),
        image_size=16,
        batch_size=4,
        num_workers=0,
        batch_augment=True,
        views=SimCLRViews(blur_prob=0.0),
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))

    class _T:
        training = True

    dm.trainer = _T()
    x, y, captions = dm.on_after_batch_transfer(batch, 0)
    assert x.shape == (4, 3, 16, 16)
    assert len(captions) == 4
    assert all(c.startswith(f"a {dm.class_names[int(label)]} square") for c, label in zip(captions, y, strict=True))
    assert len(dm.train_captions()) == 12


def test_object_store_url_path_reads_through_the_cache(chunks, tmp_path):
    """``local:`` is litdata's stand-in for a bucket URL: chunks are fetched into cache_dir as from s3://."""
    url = _dm(chunks, input_dir=f"local:{chunks / 'chunks'}", cache_dir=str(tmp_path / "cache"), num_classes=4)
    url.setup("fit")
    local = _dm(chunks)
    local.setup("fit")
    assert _epoch(url.train_dataloader()) == _epoch(local.train_dataloader())
    assert any((tmp_path / "cache").rglob("*.bin"))


# -- bad input --------------------------------------------------------------------------------------------------
def test_corrupt_jpeg_stops_optimize_and_keeps_the_old_output(chunks, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(chunks / "chunks", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    images = _folder(tmp_path / "images", per_class=3)
    bad = images / "bee" / "2.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # a JPEG header, then nothing
    with pytest.raises(ValueError, match=r"(?s)1 of 12 images .* could not be read.*left as it was.*bee/2\.jpg"):
        optimize_images(str(images), str(out), overwrite=True, num_workers=2, verbose=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "out"]  # no partial folder left
    with pytest.raises(FileExistsError, match="not empty"):
        optimize_images(str(images), str(out), verbose=False)


def test_corrupt_jpeg_inside_a_chunk_is_named_when_read(tmp_path):
    images = _folder(tmp_path / "images", per_class=2)
    bad = images / "cat" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    optimize_images(str(images), str(tmp_path / "chunks"), verify=False, num_workers=1, verbose=False)
    dm = _dm(tmp_path, batch_size=8)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"cannot decode image 'item \d+ \(cat/1\.jpg\) of .*chunks'"):
        _epoch(dm.train_dataloader())


def test_missing_or_truncated_chunk_and_empty_input_are_named(chunks, tmp_path):
    import shutil

    broken = tmp_path / "chunks"
    shutil.copytree(chunks / "chunks", broken)
    name = json.loads((broken / "index.json").read_text())["chunks"][2]["filename"]
    data = (broken / name).read_bytes()
    (broken / name).write_bytes(data[:-10])
    with pytest.raises(ValueError, match=f"chunk {name} .* is truncated"):
        _dm(tmp_path).setup("fit")
    (broken / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"chunk {name} .* is missing"):
        _dm(tmp_path).setup("fit")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="not an optimized dataset"):
        _dm(tmp_path, input_dir=str(tmp_path / "plain")).setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no images"):
        optimize_images(str(tmp_path / "empty"), str(tmp_path / "never"), verbose=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        optimize_images(str(tmp_path / "nope"), str(tmp_path / "never"), verbose=False)
    assert not (tmp_path / "never").exists()
    with pytest.raises(ValueError, match="local folder"):
        optimize_images(str(chunks / "images"), "s3://bucket/chunks", verbose=False)
    big = _dm(chunks, batch_size=64)
    big.setup("fit")
    with pytest.raises(ValueError, match="fewer than one batch"):
        big.train_dataloader()


def test_console_script_optimize_and_inspect(tmp_path, capsys):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lightning-ssl-data"] == "lightning_ssl.data.cli:main"
    images = _folder(tmp_path / "my_images", per_class=2)
    assert data_cli(["optimize", "--input", str(images), "--output", str(tmp_path / "chunks"), "--workers", "1"]) == 0
    assert "wrote 8 images (4 classes)" in capsys.readouterr().out
    assert data_cli(["inspect", str(tmp_path / "chunks")]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 8
    assert data_cli(["optimize", "--input", str(images), "--output", str(tmp_path / "chunks")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
