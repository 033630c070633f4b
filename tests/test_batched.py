"""The batched device crop (lightning_ssl.data.batched) and batch_augment for image files: the crop's scale and
aspect ratio are torchvision's RandomResizedCrop's with respect to the *original* image, the intermediate
resize costs a bounded pixel error, views are independent, and ImageFolderDataModule feeds the batched path."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from lightning_ssl.data import ImageFolderDataModule, MultiCropViews, SimCLRViews
from lightning_ssl.data.batched import BatchedResizedCrop, crop_and_resize, decode_jpeg_batch, sample_crop_boxes
from lightning_ssl.data.datasets import decode_resized

N = 3000  # draws per distribution


def _torchvision_boxes(height: int, width: int, scale, n: int) -> np.ndarray:
    """(top, left, h, w) of n draws of torchvision's RandomResizedCrop on one image of that size."""
    rrc = v2.RandomResizedCrop(8, scale=scale)
    img = torch.zeros(1, height, width, dtype=torch.uint8)
    out = []
    for _ in range(n):
        p = rrc.make_params([img])
        out.append((p["top"], p["left"], p["height"], p["width"]))
    return np.array(out, dtype=np.float64)


def _stats(boxes: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    top, left, h, w = boxes.T
    return {
        "area": h * w / (height * width),
        "log_aspect": np.log(w / h),
        "centre_y": (top + h / 2) / height,
        "centre_x": (left + w / 2) / width,
    }


@pytest.mark.parametrize(
    ("height", "width", "scale"),
    [(375, 500, (0.08, 1.0)), (500, 375, (0.2, 1.0)), (64, 64, (0.08, 1.0)), (120, 600, (0.4, 1.0))],
    ids=["landscape-4:3", "portrait-3:4", "square", "panorama-5:1"],
)
def test_crop_distribution_matches_torchvision_on_the_original(height, width, scale):
    torch.manual_seed(1)
    ours = sample_crop_boxes(torch.tensor([[height, width]] * N), scale).double().numpy()
    theirs = _torchvision_boxes(height, width, scale, N)
    a, b = _stats(ours, height, width), _stats(theirs, height, width)
    q = np.linspace(0.05, 0.95, 10)
    for k in a:
        # two-sample KS: D at alpha = 0.001 for n = m = 3000 is 1.95 * sqrt(2 / 3000) = 0.050
        d = ks_2samp(a[k], b[k]).statistic
        assert d < 0.05, f"{k}: KS distance {d:.3f} from torchvision's RandomResizedCrop"
        np.testing.assert_allclose(np.quantile(a[k], q), np.quantile(b[k], q), atol=0.04, err_msg=k)
    assert (ours[:, 0] >= 0).all()
    assert (ours[:, 0] + ours[:, 2] <= height).all()
    assert (ours[:, 1] >= 0).all()
    assert (ours[:, 1] + ours[:, 3] <= width).all()
    assert (ours == np.round(ours)).all()  # whole pixels, as torchvision's


def test_the_distribution_check_catches_a_crop_drawn_on_the_squashed_square():
    """What the test above guards against: drawing the crop on the 256 x 256 intermediate (as kornia's
    RandomResizedCrop on the squashed batch would) instead of on the 500 x 375 original."""
    torch.manual_seed(2)
    square = sample_crop_boxes(torch.tensor([[256, 256]] * N), (0.08, 1.0)).double().numpy()
    in_original = square * np.array([375 / 256, 500 / 256, 375 / 256, 500 / 256])
    theirs = _torchvision_boxes(375, 500, (0.08, 1.0), N)
    a, b = _stats(in_original, 375, 500), _stats(theirs, 375, 500)
    assert ks_2samp(a["log_aspect"], b["log_aspect"]).statistic > 0.2  # aspect shifted by log(4/3)


def test_fallback_is_torchvision_central_crop():
    # scale (1, 1) of a 5:1 panorama never fits a ratio in [3/4, 4/3]: the central crop of ratio 4/3
    boxes = sample_crop_boxes(torch.tensor([[100, 500], [500, 100], [90, 100]]), (1.0, 1.0))
    assert boxes[0].tolist() == [0, (500 - 133) // 2, 100, 133]
    assert boxes[1].tolist() == [(500 - 133) // 2, 0, 133, 100]
    assert boxes[2].tolist() == [0, 0, 90, 100]  # within the allowed ratios: the whole image
    with pytest.raises(ValueError, match="crop scale"):
        BatchedResizedCrop(8, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        sample_crop_boxes(torch.ones(3))


def _photo(height: int = 375, width: int = 500) -> np.ndarray:
    from skimage import data

    return np.array(Image.fromarray(data.astronaut()).resize((width, height), Image.Resampling.BICUBIC))


def test_intermediate_resize_costs_a_bounded_pixel_error():
    """Crops from the 256 x 256 squashed decode vs torchvision's resized_crop of the full 500 x 375 JPEG on the
    same boxes: a natural photo keeps its content to ~1% of the value range (worst for small crops)."""
    buf = io.BytesIO()
    Image.fromarray(_photo()).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    original = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()).permute(2, 0, 1)
    squashed, size = decode_resized(data, 3, 256)
    assert squashed.shape == (3, 256, 256)
    assert size.tolist() == [375, 500]
    torch.manual_seed(3)
    n = 48
    sizes = size.expand(n, 2)
    boxes = sample_crop_boxes(sizes, (0.08, 1.0))
    ours = crop_and_resize(squashed.float().div(255).expand(n, -1, -1, -1).contiguous(), boxes, 224, sizes)
    ref = torch.stack([TF.resized_crop(original, *map(int, b), [224, 224], antialias=True) for b in boxes.tolist()])
    err = (ours - ref.float() / 255).abs().mean((1, 2, 3))
    assert err.mean() < 0.02, (err.mean(), err.max())
    assert err.max() < 0.04, (err.mean(), err.max())
    small = (boxes[:, 2] * boxes[:, 3] / (375 * 500)) < 0.2
    assert err[small].mean() > err[~small].mean()  # the lost detail shows in the upsampled small crops
    # the same boxes drawn on the square (the aspect error the original sizes avoid) are far off
    wrong = crop_and_resize(squashed.float().div(255).expand(n, -1, -1, -1).contiguous(), boxes, 224, None)
    assert (wrong - ref.float() / 255).abs().mean() > 3 * err.mean()


def test_crop_and_resize_of_whole_pixels_is_exact():
    x = torch.arange(2 * 1 * 6 * 8, dtype=torch.float32).view(2, 1, 6, 8)
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 6.0, 8.0]])
    out = crop_and_resize(x, boxes, (3, 4))
    torch.testing.assert_close(out[0], x[0, :, 1:4, 2:6])  # same size: the pixels themselves
    half = crop_and_resize(x, boxes[1:].expand(2, 4), (3, 4))  # 2x shrink averages 2x2 blocks
    torch.testing.assert_close(half[0], torch.nn.functional.avg_pool2d(x[:1], 2)[0])


def test_views_of_one_image_differ_and_images_are_independent():
    torch.manual_seed(4)
    b = 2000
    sizes = torch.tensor([[375.0, 500.0]]).expand(b, 2)
    v1 = sample_crop_boxes(sizes, (0.08, 1.0)).numpy()
    v2_ = sample_crop_boxes(sizes, (0.08, 1.0)).numpy()
    assert (np.abs(v1 - v2_).sum(1) > 0).mean() > 0.99  # two views of one image: different boxes
    area1, area2 = v1[:, 2] * v1[:, 3], v2_[:, 2] * v2_[:, 3]
    assert abs(np.corrcoef(area1, area2)[0, 1]) < 0.08  # view 2 does not depend on view 1
    assert abs(np.corrcoef(area1[:-1], area1[1:])[0, 1]) < 0.08  # neighbouring images: independent
    assert abs(np.corrcoef(v1[:, 1], v2_[:, 1])[0, 1]) < 0.08
    # through the whole batched view (crop, flip, jitter, grayscale, blur): copies of one image all differ
    views = SimCLRViews().build_batched(32, 3, (0.5,) * 3, (0.25,) * 3)
    img = torch.from_numpy(_photo(60, 80)).permute(2, 0, 1).float().div(255)
    x = img.expand(16, -1, -1, -1).contiguous()
    a, c = views(x, torch.tensor([[60.0, 80.0]]).expand(16, 2))
    assert a.shape == (16, 3, 32, 32)
    assert len({round(v.sum().item(), 2) for v in a}) == 16
    assert all(not torch.allclose(a[i], c[i]) for i in range(16))


def test_multicrop_views_have_their_own_sizes_and_scales():
    preset = MultiCropViews(global_crops=2, local_crops=3, local_size=12)
    views = preset.build_batched(32, 3, (0.5,) * 3, (0.25,) * 3)
    x = torch.rand(4, 3, 37, 37)
    out = views(x, torch.tensor([[300.0, 400.0]]).expand(4, 2))
    assert [tuple(v.shape[-2:]) for v in out] == [(32, 32)] * 2 + [(12, 12)] * 3
    crops = [t.crop for t in views.transforms]
    assert [c.scale for c in crops] == [(0.4, 1.0)] * 2 + [(0.05, 0.4)] * 3


def _folder(root: Path, sizes=((40, 30), (30, 50), (64, 64), (20, 90))) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i, (w, h) in enumerate(sizes):
                Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / split / c / f"{i}.jpg")
    return root


def test_image_folder_batch_augment_decodes_in_workers_and_crops_on_device(tmp_path):
    root = _folder(tmp_path)
    dm = ImageFolderDataModule(
        train_dir=str(root / "train"),
        val_dir=str(root / "val"),
        image_size=16,
        batch_size=8,
        num_workers=0,
        batch_augment=True,
        views=SimCLRViews(blur_prob=0),
        val_bank_size=None,
    )
    assert dm.decode_size == 18  # 8/7 of the view size
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8
    assert batch["image"].shape == (8, 3, 18, 18)
    assert sorted(map(tuple, batch["size"].int().tolist())) == sorted([(30, 40), (50, 30), (64, 64), (90, 20)] * 2)

    class _T:
        training = True

    dm.trainer = _T()
    views, labels = dm.on_after_batch_transfer(batch, 0)
    assert [v.shape for v in views] == [(8, 3, 16, 16)] * 2
    assert labels.shape == (8,)
    x, y = next(iter(dm.val_dataloader()[0]))
    assert x.dtype == torch.uint8
    assert x.shape == (8, 3, 16, 16)
    _T.training = False
    xe, _ = dm.on_after_batch_transfer((x, y), 0)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    torch.testing.assert_close(xe, (x.float() / 255 - mean) / std)


def test_decode_on_the_device_matches_the_workers(tmp_path):
    """decode: device (workers read bytes; decode_jpeg on the trainer's device, the CPU here) gives the same
    images and sizes as decoding in the workers, up to the two resizers' rounding."""
    root = _folder(tmp_path)
    kw = dict(
        train_dir=str(root / "train"),
        image_size=16,
        batch_size=8,
        num_workers=0,
        batch_augment=True,
        views=SimCLRViews(blur_prob=0),
    )
    workers = ImageFolderDataModule(**kw)
    device = ImageFolderDataModule(**kw, decode="device")
    for d in (workers, device):
        d.setup("fit")
    w = next(iter(workers.train_dataloader()))
    raw = next(iter(device.train_dataloader()))
    assert isinstance(raw["data"], list)
    assert raw["data"][0].dtype == torch.uint8
    d = device.on_before_batch_transfer(raw, 0)
    torch.testing.assert_close(d["size"], w["size"])
    assert (d["image"].float() - w["image"].float()).abs().mean() < 3.0  # of 255
    with pytest.raises(ValueError, match="needs batch_augment"):
        ImageFolderDataModule(train_dir=str(root / "train"), decode="device")
    with pytest.raises(ValueError, match="decode must be"):
        ImageFolderDataModule(train_dir=str(root / "train"), decode="gpu", batch_augment=True)
    images, sizes = decode_jpeg_batch(
        [torch.frombuffer(bytearray((root / "train/cat/0.jpg").read_bytes()), dtype=torch.uint8)], 10, 1, "cpu"
    )
    assert images.shape == (1, 1, 10, 10)
    assert sizes.tolist() == [[30.0, 40.0]]


def test_corrupt_file_is_named_in_the_batched_path(tmp_path):
    root = _folder(tmp_path)
    bad = root / "train" / "dog" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 3])  # a valid header, truncated data
    dm = ImageFolderDataModule(train_dir=str(root / "train"), image_size=16, num_workers=0, batch_augment=True)
    dm.setup("fit")
    i = dm.train_set.paths.index(bad)
    with pytest.raises(ValueError, match=r"cannot decode image .*dog/1\.jpg.*truncated"):
        dm.train_set[i]
    assert math.isfinite(float(dm.train_set[0]["size"].sum()))


def test_a_new_user_switches_the_demo_config_to_their_folder(tmp_path):
    """The Fashion-MNIST demo config (batch_augment: true) with --data ImageFolderDataModule: it used to stop
    with "batch_augment needs equally sized images"; now the folder's files of any size train batched."""
    from lightning_ssl.cli import cli

    root = _folder(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs/simclr/fashion_mnist.yaml"
    c = cli(
        [
            "fit",
            "--config",
            str(config),
            "--data",
            "ImageFolderDataModule",
            f"--data.train_dir={root / 'train'}",
            f"--data.val_dir={root / 'val'}",
            "--data.batch_size=4",
            "--data.image_size=24",
            "--data.val_bank_size=8",
            "--trainer.fast_dev_run=true",
            "--trainer.logger=false",
            "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={tmp_path}",
            f"--checkpoint.dirpath={tmp_path}/ck",
        ]
    )
    assert c.datamodule.batch_augment
    assert c.datamodule.decode_size == 27
    assert c.trainer.global_step == 1
    assert c.model.backbone.image_size == 24
