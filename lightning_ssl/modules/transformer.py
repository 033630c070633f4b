"""Transformer blocks for the language models (GPT, BERT, T5) in nanoGPT's layout: pre-norm residual blocks,
attention through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels where the hardware has
them), a 4x GELU MLP, GPT-2's initialisation.

    x = x + attn(ln_1(x))              self-attention: causal (GPT, T5 decoder) or bidirectional (BERT, T5 encoder)
    x = x + cross(ln_2(x), memory)     decoder blocks only (T5): attend to the encoder's output
    x = x + mlp(ln_3(x))

Shapes: B batch, T query length, S key length, C width, H heads, C/H head size. Masks are (B, S) bool, True on
the tokens that may be attended to (not padding), or (B, T, S) bool, True where query t may attend to key s (AIM's
prefix-causal attention); None means every token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, bias: bool = True, dropout: float = 0.0, cross: bool = False) -> None:
        super().__init__()
        if dim % n_head:
            raise ValueError(f"the width ({dim}) must be divisible by the number of heads ({n_head})")
        self.n_head, self.dropout, self.cross = n_head, dropout, cross
        if cross:  # queries from x, keys and values from the encoder's output
            self.q, self.kv = nn.Linear(dim, dim, bias=bias), nn.Linear(dim, 2 * dim, bias=bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.proj.residual = True  # GPT-2 scales the init of residual projections by 1/sqrt(2 * layers)

    def forward(
        self, x: Tensor, memory: Tensor | None = None, mask: Tensor | None = None, causal: bool = False
    ) -> Tensor:
        b, t, c = x.shape
        if self.cross:
            q, (k, v) = self.q(x), self.kv(memory).split(c, dim=2)
        else:
            q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (
            z.view(b, z.shape[1], self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v)
        )  # (B, H, T|S, C/H)
        attn_mask = None
        if mask is not None:
            attn_mask = mask[:, None] if mask.ndim == 3 else mask[:, None, None, :]  # (B, 1, T | 1, S)
            if causal:
                attn_mask = attn_mask & torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril()
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and attn_mask is None,
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, c))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, dim: int, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc, self.proj, self.drop = (
            nn.Linear(dim, 4 * dim, bias=bias),
            nn.Linear(4 * dim, dim, bias=bias),
            nn.Dropout(dropout),
        )
        self.proj.residual = True

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """One pre-norm transformer block; ``cross=True`` adds cross-attention to an encoder's output (T5 decoder)."""

    def __init__(self, dim: int, n_head: int, bias: bool = True, dropout: float = 0.0, cross: bool = False) -> None:
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(dim, bias=bias), Attention(dim, n_head, bias, dropout)
        self.ln_2 = nn.LayerNorm(dim, bias=bias) if cross else None
        self.cross = Attention(dim, n_head, bias, dropout, cross=True) if cross else None
        self.ln_3, self.mlp = nn.LayerNorm(dim, bias=bias), MLP(dim, bias, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        causal: bool = False,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), mask=mask, causal=causal))
        if self.cross is not None:
            x = x + self.drop(self.cross(self.ln_2(x), memory=memory, mask=memory_mask))
        return x + self.mlp(self.ln_3(x))


def init_gpt2(module: nn.Module, n_layer: int) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases, residual projections N(0, 0.02 / sqrt(2 n_layer))."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            std = 0.02 / math.sqrt(2 * n_layer) if getattr(m, "residual", False) else 0.02
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
