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
    """Multi-head attention with ``scaled_dot_product_attention`` (causal unless ``cross``).

    Args:
        dim: Model width C.
        n_head: Attention heads, dividing ``dim``.
        bias: Biases in the projections.
        dropout: Dropout probability on the attention weights and the output, in [0, 1).
        cross: Cross-attention: queries from the input, keys and values from an encoder's output (T5 decoder).
    """

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
        # GPT-2 scales the init of residual projections by 1/sqrt(2 * layers)
        self.proj.residual = True  # type: ignore[assignment]  # a plain flag on nn.Linear, read by init_gpt2

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
    """The block's MLP: Linear (C -> 4C), GELU, Linear (4C -> C), dropout.

    Args:
        dim: Model width C.
        bias: Biases in the linear layers.
        dropout: Dropout probability on the output, in [0, 1).
    """

    def __init__(self, dim: int, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc, self.proj, self.drop = (
            nn.Linear(dim, 4 * dim, bias=bias),
            nn.Linear(4 * dim, dim, bias=bias),
            nn.Dropout(dropout),
        )
        self.proj.residual = True  # type: ignore[assignment]  # a plain flag on nn.Linear, read by init_gpt2

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """One pre-norm transformer block; ``cross=True`` adds cross-attention to an encoder's output (T5 decoder).

    Args:
        dim: Model width C.
        n_head: Attention heads, dividing ``dim``.
        bias: Biases in the linear layers and LayerNorms.
        dropout: Dropout probability, in [0, 1).
        cross: Add cross-attention to an encoder's output (T5 decoder).
    """

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
        if self.cross is not None and self.ln_2 is not None:  # both exist in decoder blocks
            x = x + self.drop(self.cross(self.ln_2(x), memory=memory, mask=memory_mask))
        return x + self.mlp(self.ln_3(x))


class TransformerTrunk(nn.Module):
    """The trunk GPT and BERT share: token + learned position embeddings, ``n_layer`` blocks, a final LayerNorm.

    ``hidden(ids (B, T), mask, causal) -> (B, T, C)``; the language models add their output heads.

    Args:
        vocab_size: number of token ids.
        block_size: the longest sequence (positions 0..block_size-1 have an embedding).
        n_layer: number of transformer blocks.
        n_head: attention heads per block (``n_embd`` must be divisible by it).
        n_embd: the width C.
        dropout: dropout on the embeddings, attention and residual branches (0 for GPT, 0.1 for BERT).
        bias: biases in the linear layers and LayerNorms (GPT-2 and BERT have them).
    """

    def __init__(
        self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float, bias: bool
    ) -> None:
        super().__init__()
        self.vocab_size, self.block_size, self.num_features = vocab_size, block_size, n_embd
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, bias, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)

    def hidden(self, ids: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """(B, T) token ids -> (B, T, C) final hidden states; ``mask`` (B, T) True on real tokens."""
        t = ids.shape[1]
        if t > self.block_size:
            raise ValueError(f"a sequence of {t} tokens is longer than block_size={self.block_size}")
        x = self.drop(self.wte(ids) + self.wpe(torch.arange(t, device=ids.device)))  # (B, T, C)
        for block in self.blocks:
            x = block(x, mask=mask, causal=causal)
        return self.ln_f(x)


def init_gpt2(module: nn.Module, n_layer: int) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases, residual projections N(0, 0.02 / sqrt(2 n_layer))."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            std = 0.02 / math.sqrt(2 * n_layer) if getattr(m, "residual", False) else 0.02
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:  # nn.Embedding has no bias
                nn.init.zeros_(m.bias)
