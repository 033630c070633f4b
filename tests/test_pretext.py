"""Early pretext tasks: rotation prediction, jigsaw puzzles, colorization (and their pieces)."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_ssl.callbacks import ColorizationImages
from lightning_ssl.data import ClassifierViews, SyntheticDataModule
from lightning_ssl.losses import ab_regression_loss, colorization_loss
from lightning_ssl.methods import Colorization, Jigsaw, RotNet
from lightning_ssl.methods.rotation import rotate_batch
from lightning_ssl.modules.backbones import SmallCNN
from lightning_ssl.modules.color import ab_bins, decode_ab, encode_ab, lab_to_rgb, rebalance_weights, rgb_to_lab
from lightning_ssl.modules.jigsaw import (
    assemble_tiles,
    extract_tiles,
    hamming_permutation_set,
    inverse_permutation,
    min_hamming_distance,
    normalize_tiles,
    shuffle_tiles,
)


def colour_grid(steps: int = 17) -> torch.Tensor:
    """Every colour of a steps^3 RGB grid (corners and edges of the cube included) as one (1, 3, steps^3, 1) image."""
    g = torch.linspace(0, 1, steps, dtype=torch.float64)
    return torch.stack(torch.meshgrid(g, g, g, indexing="ij")).reshape(1, 3, -1, 1)


# --- rotation -------------------------------------------------------------------------------------------------
def test_rotation_targets_match_the_applied_rotation():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)  # every pixel different
    rotated, targets = rotate_batch(x)
    assert rotated.shape == (8, 1, 5, 5)
    assert targets.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    n = 5
    for k in range(4):  # new[r, c] written out by hand for counter-clockwise quarter turns
        expected = {
            0: lambda r, c: x[..., r, c],
            1: lambda r, c: x[..., c, n - 1 - r],
            2: lambda r, c: x[..., n - 1 - r, n - 1 - c],
            3: lambda r, c: x[..., n - 1 - c, r],
        }[k]
        block = rotated[targets == k]
        for r in range(n):
            for c in range(n):
                torch.testing.assert_close(block[..., r, c], expected(r, c))
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.zeros(1, 1, 4, 5))


def test_rotnet_step_returns_upright_features():
    model = RotNet(SmallCNN(1, 16, width=4), head_hidden_dim=16).eval()
    x = torch.randn(3, 1, 16, 16)
    out = model.training_step(([x], torch.zeros(3, dtype=torch.long)), 0)
    assert out["features"].shape == (3, model.num_features)
    assert not out["features"].requires_grad
    torch.testing.assert_close(out["features"], model.embed(x))


# --- jigsaw ---------------------------------------------------------------------------------------------------
def test_permutation_set_size_distance_and_seed():
    perms = hamming_permutation_set(100, seed=0)
    assert perms.shape == (100, 9)
    assert perms.dtype == torch.long
    assert (perms.sort(dim=1).values == torch.arange(9)).all()  # every row is a permutation
    assert len({tuple(p) for p in perms.tolist()}) == 100
    assert min_hamming_distance(perms) >= 6  # random sets of 100 typically have 2 or 3
    g = torch.Generator().manual_seed(0)
    random = torch.stack([torch.randperm(9, generator=g) for _ in range(100)])
    assert min_hamming_distance(perms) > min_hamming_distance(random)
    assert torch.equal(perms, hamming_permutation_set(100, seed=0))
    assert not torch.equal(perms, hamming_permutation_set(100, seed=1))
    assert min_hamming_distance(hamming_permutation_set(30, seed=3)) >= 7  # fewer permutations: farther apart
    with pytest.raises(ValueError, match="num_permutations"):
        hamming_permutation_set(1)


def test_inverse_permutation_reassembles_the_image():
    x = torch.randn(4, 3, 30, 30)
    tiles = extract_tiles(x, grid=3, jitter=False)  # no gap: the 9 tiles cover the image
    assert tiles.shape == (4, 9, 3, 10, 10)
    torch.testing.assert_close(assemble_tiles(tiles), x, rtol=0, atol=0)
    perms = hamming_permutation_set(100)[torch.tensor([0, 17, 42, 99])]
    shuffled = shuffle_tiles(tiles, perms)
    assert not torch.equal(assemble_tiles(shuffled), x)
    torch.testing.assert_close(shuffled[1, 4], tiles[1, perms[1, 4]])  # position i holds tile perm[i]
    restored = shuffle_tiles(shuffled, inverse_permutation(perms))
    torch.testing.assert_close(assemble_tiles(restored), x, rtol=0, atol=0)


def test_jittered_tiles_stay_inside_their_cells():
    x = torch.randn(2, 1, 42, 42)
    tiles = extract_tiles(x, grid=3, tile_size=12, jitter=True, generator=torch.Generator().manual_seed(0))
    assert tiles.shape == (2, 9, 1, 12, 12)
    offsets = set()
    for b in range(2):
        for k in range(9):
            top, left = (k // 3) * 14, (k % 3) * 14
            found = [
                (dy, dx)
                for dy in range(3)
                for dx in range(3)
                if torch.equal(x[b, :, top + dy : top + dy + 12, left + dx : left + dx + 12], tiles[b, k])
            ]
            assert found, f"tile {k} of sample {b} is not a crop of its cell"
            offsets.add(found[0])
    assert len(offsets) > 1  # the offsets vary
    centred = extract_tiles(x, grid=3, tile_size=12, jitter=False)
    torch.testing.assert_close(centred[0, 4], x[0, :, 15:27, 15:27])
    with pytest.raises(ValueError, match="tile_size"):
        extract_tiles(x, grid=3, tile_size=15)
    n = normalize_tiles(tiles)
    torch.testing.assert_close(n.mean(dim=(2, 3, 4)), torch.zeros(2, 9), atol=1e-5, rtol=0)


def test_jigsaw_stores_its_permutations_and_embeds_tiles():
    model = Jigsaw(SmallCNN(1, 42, width=4), num_permutations=20, permutation_seed=5, tile_size=12, head_hidden_dim=16)
    assert torch.equal(model.state_dict()["permutations"], hamming_permutation_set(20, seed=5))
    other = Jigsaw(SmallCNN(1, 42, width=4), num_permutations=20, permutation_seed=6, tile_size=12, head_hidden_dim=16)
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.permutations, model.permutations)  # the checkpoint carries the task
    model.eval()
    assert model.embed(torch.randn(3, 1, 42, 42)).shape == (3, model.num_features)


# --- Lab conversion and the quantized ab space ------------------------------------------------------------------
def test_lab_round_trip_and_agreement_with_skimage():
    from skimage import color as skimage_color  # the reference implementation (dev dependency)

    torch.manual_seed(0)
    for rgb in (colour_grid(), torch.rand(3, 3, 16, 16, dtype=torch.float64)):
        ref = torch.from_numpy(skimage_color.rgb2lab(rgb.permute(0, 2, 3, 1).numpy())).permute(0, 3, 1, 2)
        torch.testing.assert_close(rgb_to_lab(rgb), ref, atol=1e-8, rtol=0)  # float64: same formula
        assert (rgb_to_lab(rgb.float()).double() - ref).abs().max() < 1e-3  # float32, L/a/b units
        back = torch.from_numpy(skimage_color.lab2rgb(ref.permute(0, 2, 3, 1).numpy())).permute(0, 3, 1, 2)
        assert (lab_to_rgb(ref.float()).double() - back).abs().max() < 1e-4
        assert (lab_to_rgb(rgb_to_lab(rgb.float())).double() - rgb).abs().max() < 1e-4  # round trip
    with torch.autocast("cpu", dtype=torch.bfloat16):  # conversions leave autocast: no bf16 rounding
        lab = rgb_to_lab(colour_grid().float())
    assert lab.dtype == torch.float32
    with pytest.raises(ValueError, match="colour images"):
        rgb_to_lab(torch.rand(1, 1, 4, 4))


def test_ab_bins_cover_the_gamut_and_encode_decode():
    bins = ab_bins(10.0)
    assert 250 <= len(bins) <= 320
    assert (bins % 10 == 0).all()
    ab = rgb_to_lab(colour_grid(33).float())[:, 1:]
    hard = encode_ab(ab, bins)
    assert (bins[hard.flatten()] - ab[0, :, :, 0].T).abs().max() <= 5 * math.sqrt(2) + 1e-4  # within a cell
    centres = bins.T.reshape(1, 2, -1, 1)
    assert torch.equal(encode_ab(centres, bins).flatten(), torch.arange(len(bins)))
    soft = encode_ab(ab, bins, soft=True)
    torch.testing.assert_close(soft.sum(1), torch.ones_like(soft[:, 0]))
    assert ((soft > 0).sum(1) == 5).all()
    assert torch.equal(soft.argmax(1), hard)
    logits = torch.full((1, len(bins), 1, 3), -20.0)
    logits[0, [3, 50, 200], 0, [0, 1, 2]] = 20.0
    torch.testing.assert_close(decode_ab(logits, bins)[0, :, 0].T, bins[[3, 50, 200]])


def test_rebalance_weights():
    bins = ab_bins()
    q = len(bins)
    uniform = rebalance_weights(torch.ones(q), bins)
    p = torch.ones(q) / q
    kernel = torch.exp(-(torch.cdist(bins, bins) ** 2) / 50)
    # uniform counts: up to the smoothing at the gamut's edge, all weights ~1
    assert (uniform - 1).abs().max() < 0.3
    assert abs(float((kernel @ p / (kernel @ p).sum() * uniform).sum()) - 1) < 1e-5
    counts = torch.ones(q)
    grey = int((bins**2).sum(1).argmin())
    counts[grey] = 1000.0  # the usual picture: mostly unsaturated colours
    w = rebalance_weights(counts, bins, lam=0.5)
    far = int((bins**2).sum(1).argmax())
    assert w[grey] < 1 < w[far]
    # lam = 1: the uniform prior alone, w = Q (normalized to expectation 1 -> all ones)
    torch.testing.assert_close(rebalance_weights(counts, bins, lam=1.0), torch.ones(q))


def test_colorization_loss_values():
    logits = torch.randn(2, 7, 3, 3)
    target = torch.randint(0, 7, (2, 3, 3))
    torch.testing.assert_close(colorization_loss(logits, target), F.cross_entropy(logits, target))
    one_hot = F.one_hot(target, 7).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(colorization_loss(logits, one_hot), F.cross_entropy(logits, target))
    w = torch.rand(7) + 0.5
    per_pixel = F.cross_entropy(logits, target, reduction="none") * w[target]
    torch.testing.assert_close(colorization_loss(logits, target, w), per_pixel.mean())
    ab, pred = torch.randn(2, 2, 4, 4) * 50, torch.randn(2, 2, 4, 4) * 50
    torch.testing.assert_close(ab_regression_loss(pred, ab), ((pred - ab) / 110).pow(2).mean())


# --- losses decrease on tiny data ---------------------------------------------------------------------------------
def _coloured_batch(n: int = 16, size: int = 16) -> torch.Tensor:
    """Smooth random colour images in [0, 1] whose colour follows their lightness pattern (a learnable mapping)."""
    g = torch.Generator().manual_seed(0)
    small = torch.rand(n, 1, 4, 4, generator=g)
    light = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
    return torch.cat([light, 1 - light, light.pow(2)], dim=1)


def _fit_fixed_batch(model, x, steps: int, lr: float) -> tuple[float, float]:
    """Loss on ``x`` (training mode, fixed seed so the random pretext targets repeat) before/after ``steps``
    Adam steps on ``x`` with fresh random targets."""
    batch = ([x], torch.zeros(len(x), dtype=torch.long))

    def measure() -> float:
        torch.manual_seed(123)
        with torch.no_grad():
            return float(model.training_step(batch, 0)["loss"])

    model.train()
    before = measure()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model.training_step(batch, 0)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, measure()


@pytest.mark.filterwarnings("ignore:.*self.log.*")
@pytest.mark.parametrize("name", ["rotation", "jigsaw", "colorization", "colorization_regression"])
def test_pretext_losses_decrease_on_tiny_data(name):
    x = _coloured_batch()
    if name == "rotation":
        x = x + torch.linspace(0, 1, 16).view(1, 1, 16, 1)  # a vertical gradient: "up" is visible
        model, steps, lr = RotNet(SmallCNN(3, 16, width=8, stages=2), head_hidden_dim=32), 30, 3e-3
    elif name == "jigsaw":
        x = F.interpolate(x, size=24) + torch.randn(16, 3, 24, 24) * 0.05
        model = Jigsaw(SmallCNN(3, 24, width=8, stages=2), num_permutations=8, tile_size=7, head_hidden_dim=64)
        steps, lr = 40, 3e-3
    else:
        mode = "regression" if name.endswith("regression") else "classification"
        model, steps, lr = Colorization(SmallCNN(3, 16, width=8, stages=2), mode=mode, decoder_dim=16), 30, 1e-2
    before, after = _fit_fixed_batch(model, x, steps, lr)
    assert after < 0.7 * before, (before, after)


# --- in a Trainer: normalization undone, pictures written --------------------------------------------------------
def test_colorization_fit_undoes_normalization_and_logs_pictures(tmp_path):
    data = SyntheticDataModule(
        num_samples=16,
        batch_size=8,
        num_workers=0,
        image_size=16,
        channels=3,
        num_classes=2,
        views=ClassifierViews(min_scale=0.5),
        batch_augment=True,
    )
    model = Colorization(SmallCNN(3, 16, width=4, stages=2), decoder_dim=8)
    images = ColorizationImages(num_images=4, every_n_epochs=1)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[images],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    mean, std = data.norm_stats()
    torch.testing.assert_close(model.rgb_mean.flatten(), torch.tensor(mean))
    assert int(model.bin_counts.sum()) == 2 * 8 * 4 * 4  # two batches of 8 images, 4x4 ab targets each
    assert images.last_path is not None
    assert images.last_path.exists()
    raw = next(iter(trainer.val_dataloaders[0]))[0][:4].float() / 255  # uint8 images with batch_augment
    m, sd = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    grey, colourized, original = model.colorize((raw - m) / sd)  # normalized as the datamodule does
    torch.testing.assert_close(original, raw, atol=1e-4, rtol=0)
    assert grey.shape == colourized.shape == (4, 3, 16, 16)
    torch.testing.assert_close(grey[:, 0], grey[:, 1], atol=1e-3, rtol=0)  # no colour in the input


def test_colorization_rejects_grey_data(tmp_path):
    data = SyntheticDataModule(
        num_samples=8,
        batch_size=4,
        num_workers=0,
        image_size=16,
        channels=1,
        views=ClassifierViews(),
        batch_augment=True,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="colour images"):
        trainer.fit(Colorization(SmallCNN(1, 16, width=4, stages=2), decoder_dim=8), datamodule=data)
