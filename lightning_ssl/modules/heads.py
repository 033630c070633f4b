"""Projection and prediction heads, configured by integers so they are expressible in YAML."""

from __future__ import annotations

import itertools

from torch import nn


class ProjectionHead(nn.Sequential):
    """MLP head: ``num_layers`` Linear layers with BatchNorm + ReLU between them.

    ``last_batch_norm`` adds a non-affine BatchNorm on the output (SimSiam, MoCo v3 projectors).
    Presets used by the methods::

      SimCLR  projector: 2 layers, BN            MoCo v2 projector: 2 layers, no BN
      BYOL    projector/predictor: 2 layers, BN  SimSiam projector: 3 layers, BN, last BN

    Args:
        in_dim: Width of the input features (the backbone's).
        hidden_dim: Width of the hidden layers (2048 for SimCLR / MoCo v2, 4096 for BYOL).
        out_dim: Output width (128 for SimCLR / MoCo v2, 256 for BYOL).
        num_layers: Linear layers, >= 1.
        batch_norm: BatchNorm after each hidden layer.
        last_batch_norm: A non-affine BatchNorm on the output (SimSiam, MoCo v3 projectors).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            last = i == num_layers - 1
            bias = not last_batch_norm if last else not batch_norm  # a BatchNorm right after makes a bias redundant
            layers.append(nn.Linear(d_in, d_out, bias=bias))
            if not last:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.ReLU(inplace=True))
            elif last_batch_norm:
                layers.append(nn.BatchNorm1d(d_out, affine=False))
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim


class DenseProjectionHead(nn.Sequential):
    """Per-cell MLP on a feature map, (B, C, h, w) -> (B, out_dim, h, w): 1x1 convolution, ReLU, 1x1 convolution
    (DenseCL's dense head, ``DenseCLNeck.mlp2`` of WXinlong/DenseCL: 2048 -> 2048 -> 128 on a ResNet-50).

    Args:
        in_dim: Channels C of the feature map.
        hidden_dim: Channels of the hidden layer.
        out_dim: Channels of the output.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> None:
        super().__init__(nn.Conv2d(in_dim, hidden_dim, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden_dim, out_dim, 1))
        self.in_dim, self.out_dim = in_dim, out_dim
