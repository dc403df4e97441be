"""nGPT: the normalized Transformer, in plain PyTorch.

Follows Loshchilov, Hsieh, Sun & Ginsburg (2024), "nGPT: Normalized Transformer with
Representation Learning on the Hypersphere" (arXiv:2410.01131), section 2.6:

1. no LayerNorm / RMSNorm anywhere;
2. every matrix is unit-norm along its embedding dimension (re-projected by
   :func:`normalize_weights_` after each optimizer step); embeddings included;
3. hidden states live on the unit sphere and move by eigen learning rates:
   ``h <- Norm(h + alpha_A * (Norm(Attn(h)) - h))`` and the same with ``alpha_M`` for the MLP;
4. q and k are normalized after RoPE and rescaled by ``s_qk``; the softmax scale is
   ``sqrt(d_head)`` instead of ``1 / sqrt(d_head)``;
5. scaled SwiGLU: ``u <- s_u * u``, ``v <- s_v * sqrt(d_model) * v``,
   ``h_M = W_o (u * SiLU(v))``;
6. logits are rescaled: ``z <- s_z * z``;
7. trained without weight decay and without warm-up (see :mod:`models.train`).

Every learned scale is stored as ``param = scale`` and used as ``param * (init / scale)``
(the paper's trick that keeps the effective Adam step size of the scales sensible).

Site taps for sui-onnx: ``blocks.N.mlp.w_o`` (down-projection, its input is "post") and
``blocks.N.mlp.w_v`` (gate projection, its raw output is "pre").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def unit(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Project ``x`` onto the unit sphere along ``dim`` (the paper's ``Norm``)."""
    return x / x.norm(p=2, dim=dim, keepdim=True).clamp_min(1e-12)


class Scale(nn.Module):
    """A learned per-channel scale with separate init value and storage scale."""

    def __init__(self, size: int, init: float, scale: float) -> None:
        super().__init__()
        self.init, self.scale = init, scale
        self.param = nn.Parameter(torch.full((size,), scale))

    def forward(self) -> torch.Tensor:
        return self.param * (self.init / self.scale)


def rope_inv_freq(d_head: int, base: float = 10000.0) -> torch.Tensor:
    """Inverse frequencies [d_head / 2] of rotary position embeddings."""
    return 1.0 / base ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)


def rope_tables(t: int, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin tables [t, d_head] for positions 0..t-1 (half-split form)."""
    angles = torch.arange(t, dtype=torch.float32, device=inv_freq.device)[:, None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def causal_mask(t: int, device: torch.device) -> torch.Tensor:
    """Additive mask [t, t]: 0 on and below the diagonal, -inf above."""
    return torch.full((t, t), float("-inf"), device=device).triu(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, T, d_head] by the position tables [T, d_head]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class NormalizedAttention(nn.Module):
    """Causal multi-head attention with normalized, rescaled q/k and RoPE."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.w_q = nn.Linear(d_model, d_model, bias=False)
        self.w_k = nn.Linear(d_model, d_model, bias=False)
        self.w_v = nn.Linear(d_model, d_model, bias=False)
        self.w_o = nn.Linear(d_model, d_model, bias=False)
        self.s_qk = Scale(self.d_head, init=1.0, scale=1.0 / math.sqrt(d_model))
        self.register_buffer("inv_freq", rope_inv_freq(self.d_head), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        q, k, v = (w(h).view(b, t, self.n_heads, self.d_head).transpose(1, 2)
                   for w in (self.w_q, self.w_k, self.w_v))
        cos, sin = rope_tables(t, self.inv_freq)
        s_qk = self.s_qk()
        q = unit(apply_rope(q, cos, sin)) * s_qk
        k = unit(apply_rope(k, cos, sin)) * s_qk
        att = (q @ k.transpose(-2, -1)) * math.sqrt(self.d_head)
        att = (att + causal_mask(t, h.device)).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.w_o(y)


class ScaledSwiGLU(nn.Module):
    """``W_o (s_u * (W_u h)  *  SiLU(s_v * sqrt(d_model) * (W_v h)))``."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w_u = nn.Linear(d_model, d_ff, bias=False)   # up
        self.w_v = nn.Linear(d_model, d_ff, bias=False)   # gate
        self.w_o = nn.Linear(d_ff, d_model, bias=False)   # down
        self.s_u = Scale(d_ff, init=1.0, scale=1.0)
        self.s_v = Scale(d_ff, init=1.0, scale=1.0)
        self.v_scale = math.sqrt(d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u = self.w_u(h) * self.s_u()
        v = self.w_v(h) * (self.s_v() * self.v_scale)
        return self.w_o(u * F.silu(v))


class NormalizedBlock(nn.Module):
    """One nGPT layer: two spherical interpolation steps (attention, then MLP)."""

    def __init__(self, d_model: int, d_ff: int, n_heads: int, n_layers: int) -> None:
        super().__init__()
        self.attn = NormalizedAttention(d_model, n_heads)
        self.mlp = ScaledSwiGLU(d_model, d_ff)
        alpha_init = max(0.05, 1.0 / n_layers)  # paper: 0.05, "in the order of 1/n_layers"
        self.alpha_a = Scale(d_model, init=alpha_init, scale=1.0 / math.sqrt(d_model))
        self.alpha_m = Scale(d_model, init=alpha_init, scale=1.0 / math.sqrt(d_model))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h_a = unit(self.attn(h))
        h = unit(h + self.alpha_a().abs() * (h_a - h))
        h_m = unit(self.mlp(h))
        return unit(h + self.alpha_m().abs() * (h_m - h))


class NGPT(nn.Module):
    """Decoder-only normalized Transformer returning logits [B, T, vocab]."""

    def __init__(self, vocab: int, d_model: int, n_layers: int, d_ff: int, n_heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)               # E_input
        self.blocks = nn.ModuleList(
            NormalizedBlock(d_model, d_ff, n_heads, n_layers) for _ in range(n_layers))
        self.unembed = nn.Linear(d_model, vocab, bias=False)    # E_output (untied)
        self.s_z = Scale(vocab, init=1.0, scale=1.0 / math.sqrt(d_model))
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=1.0 / math.sqrt(d_model))
        normalize_weights_(self)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = unit(self.embed(input_ids))
        for block in self.blocks:
            h = block(h)
        return self.unembed(h) * self.s_z()


@torch.no_grad()
def normalize_weights_(model: NGPT) -> None:
    """Re-project every matrix onto the unit sphere along its embedding (d_model) dimension.

    ``nn.Linear`` stores [out, in]: matrices that read the residual stream (q, k, v, u, v-gate,
    unembedding) are normalized over ``in``; matrices that write to it (the two output
    projections) over ``out``. Embedding rows are normalized. Call after every optimizer step.
    """
    model.embed.weight.copy_(unit(model.embed.weight, dim=1))
    model.unembed.weight.copy_(unit(model.unembed.weight, dim=1))
    for block in model.blocks:
        for w in (block.attn.w_q, block.attn.w_k, block.attn.w_v, block.mlp.w_u, block.mlp.w_v):
            w.weight.copy_(unit(w.weight, dim=1))
        for w in (block.attn.w_o, block.mlp.w_o):
            w.weight.copy_(unit(w.weight, dim=0))


def build_ngpt(d_model: int, n_layers: int, d_ff: int, vocab: int, n_heads: int) -> NGPT:
    """Factory used by the recipes (initialization uses the global torch seed)."""
    return NGPT(vocab=vocab, d_model=d_model, n_layers=n_layers, d_ff=d_ff, n_heads=n_heads)
