"""GPT-2 style decoder with Mix-LN, in plain PyTorch.

Mix-LN (Li, Yin & Liu 2024, "Mix-LN: Unleashing the Power of Deeper Layers by Combining
Pre-LN and Post-LN", arXiv:2412.13795) uses Post-LN in the first ``round(alpha * L)`` blocks
(at least one) and Pre-LN in the rest; the paper's default is ``alpha = 0.25``. With
``n_post_ln=0`` this module is an ordinary Pre-LN GPT-2 (learned positions, GELU-tanh MLP),
so it doubles as a readable reference model.

The unembedding is *not* tied to the token embedding (the Mix-LN paper works with untied
LLaMA-style models): with tied weights and a Post-LN first block, our small runs stall at the
unigram loss (~6.4 nats with the 4096 tokenizer) while the untied model trains like Pre-LN
GPT-2.

Site taps for sui-onnx: ``blocks.N.mlp.c_proj`` (down-projection, its input is "post") and
``blocks.N.mlp.c_fc`` (up-projection, its output is "pre").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.ngpt import causal_mask


class CausalSelfAttention(nn.Module):
    """Plain causal multi-head attention with a fused qkv projection."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.c_attn = nn.Linear(d_model, 3 * d_model)
        self.c_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.n_heads, self.d_head).transpose(1, 2)
                   for z in self.c_attn(x).split(d, dim=-1))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
        att = (att + causal_mask(t, x.device)).softmax(dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """``c_proj(GELU_tanh(c_fc(x)))``."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(d_model, d_ff)
        self.c_proj = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """A transformer block in Post-LN (``post_ln=True``) or Pre-LN arrangement."""

    def __init__(self, d_model: int, d_ff: int, n_heads: int, post_ln: bool) -> None:
        super().__init__()
        self.post_ln = post_ln
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_ln:
            x = self.ln_1(x + self.attn(x))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class MixLNGPT(nn.Module):
    """GPT-2 style decoder; the first ``n_post_ln`` blocks are Post-LN, the rest Pre-LN."""

    def __init__(self, vocab: int, d_model: int, n_layers: int, d_ff: int, n_heads: int,
                 n_post_ln: int, n_positions: int = 256) -> None:
        super().__init__()
        self.n_post_ln = n_post_ln
        self.wte = nn.Embedding(vocab, d_model)
        self.wpe = nn.Embedding(n_positions, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, d_ff, n_heads, post_ln=i < n_post_ln) for i in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():   # GPT-2's scaled init of residual writers
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def build_mixln(d_model: int, n_layers: int, d_ff: int, vocab: int, n_heads: int,
                alpha: float = 0.25, n_positions: int = 256) -> MixLNGPT:
    """Mix-LN GPT with ``max(1, round(alpha * n_layers))`` Post-LN blocks."""
    n_post = max(1, round(alpha * n_layers))
    return MixLNGPT(vocab, d_model, n_layers, d_ff, n_heads, n_post, n_positions)
