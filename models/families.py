"""Model families: how to build each one at a given size, and where its FFN sites are.

A *family* is a name (``gpt2``, ``llama``, ``gemma``, ``opt``, ``phi3``, ``gpt_neox``,
``bert``, ``ngpt``, ``mixln``) mapped to a :class:`Family`: a builder taking
``(d_model, n_layers, d_ff, vocab, n_heads)`` and the module paths of its FFN taps.

FFN sites (the names sui-onnx uses):

* **post** -- the hidden activation, i.e. the *input* of the down-projection
  (captured with a forward pre-hook on the down-projection module);
* **pre**  -- the output of the up projection before the nonlinearity; for gated FFNs
  (SwiGLU / GeGLU) the output of the *gate* projection. For Phi-3's fused ``gate_up_proj``
  it is the first half of that output (the gate), as Phi-3 splits it with ``chunk(2)``.

The HuggingFace families use transformers configs and are exported with optimum; ``ngpt``
and ``mixln`` are plain torch modules exported with ``torch.onnx.export``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

N_POSITIONS = 256


@dataclass(frozen=True)
class Family:
    """How to build a family and where its FFN taps are."""

    name: str
    build: Callable[[int, int, int, int, int], nn.Module]
    layers: str            # attribute path of the block list, e.g. "transformer.h"
    down: str              # block-relative path of the down-projection ("post" = its input)
    pre: str               # block-relative path of the up/gate projection ("pre" = its output)
    activation: str        # gelu | swiglu | geglu | relu
    exporter: str          # "optimum" or "torch.onnx"
    activation_fn: str = ""          # the exact nonlinearity, e.g. "gelu_tanh", "silu"
    pre_fused_halves: bool = False   # pre module emits [gate | up]; keep the gate half
    optimum_task: str = "text-generation"
    causal_lm: bool = True


# --------------------------------------------------------------------------- HF builders


def _common(vocab: int) -> dict:
    return {"vocab_size": vocab, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


def _gpt2(d_model: int, n_layers: int, d_ff: int, vocab: int, n_heads: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_inner=d_ff,
                     n_positions=N_POSITIONS, activation_function="gelu_new", resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, **_common(vocab))
    return GPT2LMHeadModel(cfg)


def _llama(d_model: int, n_layers: int, d_ff: int, vocab: int, n_heads: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=d_model, intermediate_size=d_ff, num_hidden_layers=n_layers,
                      num_attention_heads=n_heads, num_key_value_heads=n_heads,
                      max_position_embeddings=N_POSITIONS, hidden_act="silu",
                      tie_word_embeddings=True, **_common(vocab))
    return LlamaForCausalLM(cfg)


def _gemma(d_model: int, n_layers: int, d_ff: int, vocab: int, n_heads: int) -> nn.Module:
    from transformers import GemmaConfig, GemmaForCausalLM
    cfg = GemmaConfig(hidden_size=d_model, intermediate_size=d_ff, num_hidden_layers=n_layers,
                      num_attention_heads=n_heads, num_key_value_heads=n_heads,
                      head_dim=d_model // n_heads, hidden_activation="gelu_pytorch_tanh",
                      max_position_embeddings=N_POSITIONS, **_common(vocab))
    return GemmaForCausalLM(cfg)


def _opt(d_model: int, n_layers: int, d_ff: int, vocab: int, n_heads: int) -> nn.Module:
    from transformers import OPTConfig, OPTForCausalLM
    cfg = OPTConfig(hidden_size=d_model, ffn_dim=d_ff, num_hidden_layers=n_layers,
                    num_attention_heads=n_heads, word_embed_proj_dim=d_model,
                    max_position_embeddings=N_POSITIONS, activation_function="relu",
                    do_layer_norm_before=True, dropout=0.0, attention_dropout=0.0,
                    **_common(vocab))
    return OPTForCausalLM(cfg)


def _phi3(d_model: int, n_layers: int, d_ff: int, vocab: int, n_heads: int) -> nn.Module:
    from transformers import Phi3Config, Phi3ForCausalLM
    cfg = Phi3Config(hidden_size=d_model, intermediate_size=d_ff, num_hidden_layers=n_layers,
                     num_attention_heads=n_heads, num_key_value_heads=n_heads, hidden_act="silu",
                     max_position_embeddings=N_POSITIONS,
                     original_max_position_embeddings=N_POSITIONS, resid_pdrop=0.0,
                     embd_pdrop=0.0, attention_dropout=0.0, **_common(vocab))
    return Phi3ForCausalLM(cfg)


def _gpt_neox(d_model: int, n_layers: int, d_ff: int, vocab: int, n_heads: int) -> nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    cfg = GPTNeoXConfig(hidden_size=d_model, intermediate_size=d_ff, num_hidden_layers=n_layers,
                        num_attention_heads=n_heads, hidden_act="gelu", rotary_pct=0.25,
                        max_position_embeddings=N_POSITIONS, use_parallel_residual=True,
                        **_common(vocab))
    return GPTNeoXForCausalLM(cfg)


def _bert(d_model: int, n_layers: int, d_ff: int, vocab: int, n_heads: int) -> nn.Module:
    from transformers import BertConfig, BertModel
    cfg = BertConfig(hidden_size=d_model, intermediate_size=d_ff, num_hidden_layers=n_layers,
                     num_attention_heads=n_heads, hidden_act="gelu",
                     max_position_embeddings=N_POSITIONS, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, vocab_size=vocab, pad_token_id=0)
    return BertModel(cfg)   # with pooler, so optimum's reload initializes nothing


def _ngpt(d_model: int, n_layers: int, d_ff: int, vocab: int, n_heads: int) -> nn.Module:
    from models.ngpt import build_ngpt
    return build_ngpt(d_model, n_layers, d_ff, vocab, n_heads)


def _mixln(d_model: int, n_layers: int, d_ff: int, vocab: int, n_heads: int) -> nn.Module:
    from models.mixln import build_mixln
    return build_mixln(d_model, n_layers, d_ff, vocab, n_heads, n_positions=N_POSITIONS)


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("gpt2", _gpt2, "transformer.h", "mlp.c_proj", "mlp.c_fc", "gelu", "optimum",
           activation_fn="gelu_tanh"),
    Family("llama", _llama, "model.layers", "mlp.down_proj", "mlp.gate_proj", "swiglu", "optimum",
           activation_fn="silu"),
    Family("gemma", _gemma, "model.layers", "mlp.down_proj", "mlp.gate_proj", "geglu", "optimum",
           activation_fn="gelu_tanh"),
    Family("opt", _opt, "model.decoder.layers", "fc2", "fc1", "relu", "optimum",
           activation_fn="relu"),
    Family("phi3", _phi3, "model.layers", "mlp.down_proj", "mlp.gate_up_proj", "swiglu",
           "optimum", activation_fn="silu", pre_fused_halves=True),
    Family("gpt_neox", _gpt_neox, "gpt_neox.layers", "mlp.dense_4h_to_h", "mlp.dense_h_to_4h",
           "gelu", "optimum", activation_fn="gelu_erf"),
    Family("bert", _bert, "encoder.layer", "output.dense", "intermediate.dense", "gelu",
           "optimum", activation_fn="gelu_erf", optimum_task="feature-extraction", causal_lm=False),
    Family("ngpt", _ngpt, "blocks", "mlp.w_o", "mlp.w_v", "swiglu", "torch.onnx",
           activation_fn="silu"),
    Family("mixln", _mixln, "blocks", "mlp.c_proj", "mlp.c_fc", "gelu", "torch.onnx",
           activation_fn="gelu_tanh"),
]}


def build_model(family: str, d_model: int, n_layers: int, d_ff: int, vocab: int,
                n_heads: int | None = None, seed: int = 0) -> nn.Module:
    """Build a freshly (seeded) initialized model of ``family`` in eval mode."""
    n_heads = n_heads or max(1, d_model // 32)
    torch.manual_seed(seed)
    model = FAMILIES[family].build(d_model, n_layers, d_ff, vocab, n_heads)
    return model.eval()


def lm_logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits [B, T, vocab] for both HF causal LMs and the plain torch modules."""
    out = model(input_ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def ffn_modules(model: nn.Module, family: str) -> list[tuple[nn.Module, nn.Module]]:
    """(down-projection, up/gate projection) module pairs, one per layer."""
    fam = FAMILIES[family]
    return [(_get(block, fam.down), _get(block, fam.pre)) for block in _get(model, fam.layers)]


@torch.no_grad()
def capture_ffn(model: nn.Module, family: str, input_ids: torch.Tensor,
                batch_shape: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Run ``model`` on ``input_ids`` and return ``post_{i}`` / ``pre_{i}`` arrays [B, T, D].

    Shapes are restored to [B, T, D] when a family flattens tokens (OPT does).
    """
    fam = FAMILIES[family]
    b, t = batch_shape or tuple(input_ids.shape)
    captured: dict[str, np.ndarray] = {}
    handles = []

    def as_btd(x: torch.Tensor) -> np.ndarray:
        return x.detach().float().reshape(b, t, x.shape[-1]).numpy().copy()

    for i, (down, pre) in enumerate(ffn_modules(model, family)):
        def post_hook(_m, args, i=i):
            captured[f"post_{i}"] = as_btd(args[0])

        def pre_hook(_m, _args, out, i=i):
            if fam.pre_fused_halves:
                out = out.chunk(2, dim=-1)[0]
            captured[f"pre_{i}"] = as_btd(out)

        handles.append(down.register_forward_pre_hook(post_hook))
        handles.append(pre.register_forward_hook(pre_hook))
    try:
        model(input_ids)
    finally:
        for h in handles:
            h.remove()
    return captured
