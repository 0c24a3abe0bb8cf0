"""Transformer building blocks: RMSNorm, rotary embeddings, block-causal attention with a KV cache, SwiGLU."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

KV = tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 even under autocast, as the official code does.
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight.to(x.dtype)


# Rotary position embedding ----------------------------------------------------------------------


def rope_inv_freq(dim: int, theta: float) -> torch.Tensor:
    """theta^(-2i/dim) for i < dim/2, computed in float32 with NumPy exactly as the official code does."""
    exps = np.arange(0, dim, 2)[: dim // 2].astype(np.float32) / np.float32(dim)
    return torch.from_numpy((1.0 / (np.float32(theta) ** exps)).astype(np.float32))


def axial_pairs(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs given to the (t, h, w) axes: 3/8 of them to each spatial axis, the rest to time."""
    pairs = head_dim // 2
    spatial = (pairs * 3) // 8
    return pairs - 2 * spatial, spatial, spatial


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Rotation angles (L, head_dim/2) in float32.

    ``positions`` is (L,) for the official 1-D RoPE over the flat token index, or (L, 3) for axial
    RoPE over (time slice, patch row, patch column).
    """
    if positions.ndim == 1:
        freqs = rope_inv_freq(head_dim, theta).to(positions.device)
        # The product is formed in float64 and rounded once to float32 before cos/sin, as the official
        # code does: at positions near 1M this rounding changes the angle by more than an ulp.
        return (positions.double()[:, None] * freqs.double()[None, :]).float()
    parts = []
    for axis, pairs in enumerate(axial_pairs(head_dim)):
        freqs = rope_inv_freq(2 * pairs, theta).to(positions.device)
        parts.append(positions[:, axis].double()[:, None] * freqs.double()[None, :])
    return torch.cat(parts, dim=-1).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs (2i, 2i+1) of x (B, L, nh, hd) by angles given as cos/sin (L, hd/2).

    Each pair is the complex number x[2i] + i x[2i+1], as in the official (Meta LLaMA style) code,
    multiplied by cos + i sin. Written in real arithmetic: torch.compile cannot generate code for
    complex tensors and would fall back to eager around every attention layer.
    """
    re, im = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # each (B, L, nh, hd/2)
    c, s = cos[:, None, :], sin[:, None, :]  # (L, 1, hd/2)
    return torch.stack((re * c - im * s, re * s + im * c), dim=-1).flatten(-2).to(x.dtype)  # (B, L, nh, hd)


# Attention and MLP ------------------------------------------------------------------------------


def block_causal_mask(
    num_tokens: int,
    tokens_per_block: int,
    device: torch.device,
    window: int | None = None,
    past_blocks: int = 0,
    segments: torch.Tensor | None = None,
) -> torch.Tensor:
    """(L, past + L) boolean mask, True where a query may attend: full inside a block, causal across
    blocks, and with ``window`` at most that many earlier blocks (the ``past_blocks`` cached ones first).

    ``segments`` (B, past_blocks + n_blocks) gives each block a segment id (a keyframe starts a new
    one); blocks then attend only within their own segment and the mask is (B, 1, L, past + L)."""
    query = torch.arange(num_tokens, device=device) // tokens_per_block + past_blocks
    key = torch.arange(past_blocks * tokens_per_block + num_tokens, device=device) // tokens_per_block
    behind = query[:, None] - key[None, :]
    mask = (behind >= 0) if window is None else (behind >= 0) & (behind <= window)
    if segments is None:
        return mask
    segments = segments.to(device)
    same = segments[:, query, None] == segments[:, None, key]  # (B, L, past + L)
    return (mask & same)[:, None]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        past: KV | None = None,
    ) -> tuple[torch.Tensor, KV]:
        """x (B, L, D). ``past`` holds keys/values (B, nh, Lp, hd) of earlier blocks, all visible to x.

        Returns the output and this call's own keys/values, so the caller decides whether to keep them.
        """
        B, L, D = x.shape
        q = self.wq(x).view(B, L, self.num_heads, self.head_dim)  # (B, L, nh, hd)
        k = self.wk(x).view(B, L, self.num_heads, self.head_dim)
        v = self.wv(x).view(B, L, self.num_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, L, hd)
        keys, values = k, v
        if past is not None:
            keys = torch.cat((past[0], k), dim=2)  # (B, nh, Lp + L, hd)
            values = torch.cat((past[1], v), dim=2)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, nh, L, hd)
        y = y.transpose(1, 2).reshape(B, L, D)
        return self.wo(y), (k, v)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm LLaMA block without biases."""

    def __init__(self, dim: int, hidden: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim, eps)
        self.attn = Attention(dim, num_heads)
        self.mlp_norm = RMSNorm(dim, eps)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x, cos, sin, mask, past: KV | None = None) -> tuple[torch.Tensor, KV]:
        h, kv = self.attn(self.attn_norm(x), cos, sin, mask, past)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), kv


class TransformerStack(nn.Module):
    """A stack of blocks and a final norm; the base of the encoder and the decoder.

    ``past`` is one (k, v) per layer; the new (k, v) of every layer is returned with the output.
    """

    def __init__(self, num_layers: int, dim: int, hidden: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(dim, hidden, num_heads, eps) for _ in range(num_layers))
        self.norm = RMSNorm(dim, eps)
        # Set from outside (training code) to trade compute for activation memory.
        self.activation_checkpointing = False

    def run_layers(self, x, cos, sin, mask, past: list[KV] | None = None) -> tuple[torch.Tensor, list[KV]]:
        new_kv: list[KV] = []
        for i, layer in enumerate(self.layers):
            layer_past = past[i] if past is not None else None
            if self.activation_checkpointing and self.training:
                x, kv = checkpoint(layer, x, cos, sin, mask, layer_past, use_reentrant=False)
            else:
                x, kv = layer(x, cos, sin, mask, layer_past)
            new_kv.append(kv)
        return self.norm(x), new_kv
