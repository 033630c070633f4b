"""DINO's projection head (Caron et al., 2021, sec. 3.1 and appendix): an MLP, an L2-normalized bottleneck and a
weight-normalized linear layer to K prototypes (no bias).

    z = normalize(MLP(h))                  (B, bottleneck_dim)   MLP: Linear-GELU x (num_layers - 1), Linear
    out = z @ (g * v / ||v||).T            (B, out_dim)           g fixed to 1 with ``norm_last_layer``

With ``norm_last_layer`` the prototypes are unit vectors, which the paper found to stabilise training; the
last layer is frozen during the first epoch (the method zeroes its gradients).
"""

from __future__ import annotations

import itertools

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """DINO's projection head: an MLP, an L2-normalized bottleneck, a weight-normalized last layer.

    (B, in_dim) -> (B, out_dim) logits; the teacher's and student's are compared by ``dino_loss``.

    Args:
        in_dim: Width of the backbone features.
        hidden_dim: Hidden width of the MLP (2048 in the paper).
        bottleneck_dim: Width of the L2-normalized bottleneck (256 in the paper).
        out_dim: Output dimension K (65536 in the paper).
        num_layers: Linear layers before the last one, >= 1 (3 in the paper).
        batch_norm: BatchNorm between the MLP's layers (off in the paper's ViT runs).
        norm_last_layer: Fix the weight-normalized last layer's norm to 1 (the paper's default for ViT-S).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        out_dim: int = 65536,
        num_layers: int = 3,
        batch_norm: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(d_in, d_out))
            if i < num_layers - 1:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0  # (out_dim, 1), the norms
        g.data.fill_(1.0)
        g.requires_grad_(not norm_last_layer)
        self.in_dim, self.out_dim, self.bottleneck_dim = in_dim, out_dim, bottleneck_dim

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B, out_dim) logits; works on any leading shape."""
        z = F.normalize(self.mlp(x), dim=-1, p=2, eps=1e-6)
        return self.last_layer(z)
