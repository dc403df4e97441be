"""A zoo of Hugging Face architectures beyond the reference families: tiny random-init models
exported with optimum, their FFN activations tapped by sui-onnx and compared with PyTorch hooks.

    python -m models.architectures                 # every architecture, one line each
    python -m models.architectures t5 falcon       # some of them
    python -m models.architectures --dynamo        # through torch.onnx.export(dynamo=True) instead

Each model has 2 layers, d_model 64 and d_ff 176 (an odd width no attention dimension shares;
BLOOM and MPT fix d_ff = 4 d_model = 256). The reference is the input of every linear layer that
maps d_ff back to d_model (the down-projection), captured with forward pre-hooks in call order;
seq2seq models (T5, BART) run the encoder on the ids and the decoder on the same ids, so the
encoder's layers come first. With ``--dynamo`` the single-graph models go through torch's own
exporter (torch.export + onnxscript: no module-scoped node names, weights in external data). sui-onnx side: graph detection (`find_taps`), the tapped copy and
`TapRunner` (with `encoder=` for the decoder), as `sui-onnx report` uses them. `slim_check` then
narrows each single-graph export to half its width with slim's library (`SlimStudy`) and compares
the narrowed ONNX model with `slim_reference`, the method written out again in PyTorch. The
export-marked tests/test_architectures.py runs this for every entry, and for optimum's merged
decoders of the `MERGED` entries (`export_merged`; `incremental_diff` checks that the with-past
branch computes the same model).
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

D_MODEL, D_FF, LAYERS, HEADS, VOCAB = 64, 176, 2, 4, 512
OPSET = 18
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Arch:
    """One architecture: its transformers model_type and the config keywords that make it tiny."""

    name: str
    config: dict
    kind: str = "causal"  # causal | encoder | seq2seq
    d_ff: int = D_FF
    notes: str = ""


_LLAMA_LIKE = dict(hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=LAYERS,
                   num_attention_heads=HEADS, num_key_value_heads=2, vocab_size=VOCAB)
_BERT_LIKE = dict(hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, vocab_size=VOCAB)

ARCHS: list[Arch] = [
    Arch("qwen2", _LLAMA_LIKE, notes="SwiGLU, GQA, QKV bias"),
    Arch("qwen3", {**_LLAMA_LIKE, "head_dim": 16}, notes="SwiGLU, QK-norm"),
    Arch("mistral", _LLAMA_LIKE, notes="SwiGLU, GQA"),
    Arch("gemma2", {**_LLAMA_LIKE, "head_dim": 16}, notes="GeGLU, sandwich norms, logit soft-capping"),
    Arch("granite", _LLAMA_LIKE, notes="SwiGLU with residual / embedding multipliers"),
    Arch("olmo", {k: v for k, v in _LLAMA_LIKE.items() if k != "num_key_value_heads"}, notes="SwiGLU, non-parametric LayerNorm"),
    Arch("stablelm", _LLAMA_LIKE, notes="SwiGLU, partial rotary, LayerNorm"),
    Arch("phi", _BERT_LIKE, notes="parallel attention + MLP, gelu_new"),
    Arch("falcon", dict(hidden_size=D_MODEL, num_hidden_layers=LAYERS, num_attention_heads=HEADS, vocab_size=VOCAB,
                        new_decoder_architecture=False, multi_query=True, ffn_hidden_size=D_FF),
         notes="parallel attention, multi-query, exact GELU"),
    Arch("gptj", dict(n_embd=D_MODEL, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, n_inner=D_FF, rotary_dim=8),
         notes="parallel attention + MLP, gelu_new"),
    Arch("codegen", dict(n_embd=D_MODEL, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, n_inner=D_FF, rotary_dim=8),
         notes="GPT-J-like with fused QKV"),
    Arch("bloom", dict(hidden_size=D_MODEL, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB), d_ff=4 * D_MODEL,
         notes="ALiBi, BLOOM GELU (tanh form written out)"),
    Arch("gpt_bigcode", dict(n_embd=D_MODEL, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, n_inner=D_FF),
         notes="StarCoder: multi-query, gelu_pytorch_tanh"),
    Arch("mpt", dict(d_model=D_MODEL, n_layers=LAYERS, n_heads=HEADS, vocab_size=VOCAB), d_ff=4 * D_MODEL,
         notes="ALiBi, exact GELU, no biases"),
    Arch("gpt_neo", dict(hidden_size=D_MODEL, num_layers=LAYERS, num_heads=HEADS, vocab_size=VOCAB, intermediate_size=D_FF,
                         attention_types=[[["global", "local"], 1]], window_size=16),
         notes="alternating global / local attention"),
    Arch("gpt_neox", dict(hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                          vocab_size=VOCAB), notes="Pythia: parallel attention + MLP, exact GELU"),
    Arch("opt", dict(hidden_size=D_MODEL, ffn_dim=D_FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS, vocab_size=VOCAB,
                     word_embed_proj_dim=D_MODEL), notes="ReLU, tokens flattened before the FFN"),
    Arch("olmo2", _LLAMA_LIKE, notes="SwiGLU, post-norms, QK-norm"),
    Arch("cohere", _LLAMA_LIKE, notes="SwiGLU, parallel attention + MLP, LayerNorm, logit scale"),
    Arch("helium", {**_LLAMA_LIKE, "head_dim": 16}, notes="SwiGLU"),
    Arch("nemotron", {**_LLAMA_LIKE, "head_dim": 16}, notes="squared ReLU, no gate"),
    Arch("smollm3", {**_LLAMA_LIKE, "pad_token_id": 0}, notes="SwiGLU, layers without RoPE"),
    Arch("arcee", _LLAMA_LIKE, notes="ReLU squared, no gate"),
    Arch("gemma", {**_LLAMA_LIKE, "head_dim": 16}, notes="GeGLU, scaled embeddings"),
    Arch("gemma3_text", {**_LLAMA_LIKE, "head_dim": 16}, notes="GeGLU, sandwich norms, QK-norm, sliding window"),
    Arch("phi3", {**_LLAMA_LIKE, "pad_token_id": 0}, notes="fused gate_up projection"),
    Arch("glm", {**_LLAMA_LIKE, "head_dim": 16, "pad_token_id": 0}, notes="fused gate_up projection, partial rotary"),
    Arch("roberta", _BERT_LIKE, kind="encoder"),
    Arch("xlm-roberta", _BERT_LIKE, kind="encoder"),
    Arch("electra", {**_BERT_LIKE, "embedding_size": D_MODEL}, kind="encoder"),
    Arch("deberta-v2", _BERT_LIKE, kind="encoder", notes="disentangled attention"),
    Arch("distilbert", dict(dim=D_MODEL, hidden_dim=D_FF, n_layers=LAYERS, n_heads=HEADS, vocab_size=VOCAB), kind="encoder"),
    Arch("mobilebert", dict(hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                            vocab_size=VOCAB, embedding_size=D_MODEL, intra_bottleneck_size=D_MODEL,
                            true_hidden_size=D_MODEL, num_feedforward_networks=1), kind="encoder", notes="bottleneck layers"),
    Arch("modernbert", dict(hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                            vocab_size=VOCAB, pad_token_id=0), kind="encoder", notes="GeGLU with fused Wi, RoPE"),
    Arch("mpnet", _BERT_LIKE, kind="encoder"),
    Arch("camembert", _BERT_LIKE, kind="encoder"),
    Arch("esm", {**_BERT_LIKE, "pad_token_id": 1}, kind="encoder", notes="protein language model"),
    Arch("roformer", _BERT_LIKE, kind="encoder", notes="rotary positions"),
    Arch("megatron-bert", _BERT_LIKE, kind="encoder", notes="pre-LayerNorm"),
    Arch("t5", dict(d_model=D_MODEL, d_ff=D_FF, num_layers=LAYERS, num_heads=HEADS, d_kv=16, vocab_size=VOCAB,
                    feed_forward_proj="gated-gelu"), kind="seq2seq", notes="encoder + decoder, gated GELU (T5 v1.1)"),
    Arch("bart", dict(d_model=D_MODEL, encoder_ffn_dim=D_FF, decoder_ffn_dim=D_FF, encoder_layers=LAYERS,
                      decoder_layers=LAYERS, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                      vocab_size=VOCAB), kind="seq2seq", notes="encoder + decoder, exact GELU"),
    Arch("mt5", dict(d_model=D_MODEL, d_ff=D_FF, num_layers=LAYERS, num_heads=HEADS, d_kv=16, vocab_size=VOCAB),
         kind="seq2seq", notes="gated GELU"),
    Arch("marian", dict(d_model=D_MODEL, encoder_ffn_dim=D_FF, decoder_ffn_dim=D_FF, encoder_layers=LAYERS, decoder_layers=LAYERS,
                        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, vocab_size=VOCAB,
                        decoder_start_token_id=0, pad_token_id=0), kind="seq2seq", notes="translation, sinusoidal positions"),
    Arch("pegasus", dict(d_model=D_MODEL, encoder_ffn_dim=D_FF, decoder_ffn_dim=D_FF, encoder_layers=LAYERS,
                         decoder_layers=LAYERS, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                         vocab_size=VOCAB), kind="seq2seq", notes="pre-LayerNorm"),
]
BY_NAME = {a.name: a for a in ARCHS}
# a mixture of experts as optimum exports it: every expert a MatMul FFN of its own on the tokens
# routed to it (its down projections are the d_ff -> d_model Linears the hooks catch)
EXPERTS = 4
MOE = Arch("qwen3_moe", {**_LLAMA_LIKE, "head_dim": 16, "moe_intermediate_size": D_FF, "num_experts": EXPERTS,
                         "num_experts_per_tok": 2, "decoder_sparse_step": 1},
           notes="top-2 of 4 experts per layer, SwiGLU experts")
# optimum's merged decoder (export_merged): the two reference families with a Hugging Face class,
# and causal ones with other attention and FFN layouts (GQA, Gemm biases, multi-query, ALiBi)
MERGED: list[Arch] = [
    Arch("llama", _LLAMA_LIKE, notes="SwiGLU, GQA"),
    Arch("gpt2", dict(n_embd=D_MODEL, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, n_inner=D_FF),
         notes="Conv1D as Gemm, Reshape to the width, gelu_new"),
    BY_NAME["qwen2"], BY_NAME["phi"], BY_NAME["falcon"], BY_NAME["bloom"],
]


def input_ids() -> np.ndarray:
    """The [2, 16] ids every check runs on (ids >= 5 avoid special tokens)."""
    return np.random.default_rng(0).integers(5, VOCAB, (2, 16))


def build(arch: Arch) -> torch.nn.Module:
    """The seeded random-init model, with every bias / norm vector jittered so that a tap that
    misses an added bias cannot pass by accident."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(arch.name, **arch.config)
    auto = {"causal": AutoModelForCausalLM, "encoder": AutoModel, "seq2seq": AutoModelForSeq2SeqLM}[arch.kind]
    model = auto.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _down_modules(model: torch.nn.Module, arch: Arch) -> list[torch.nn.Module]:
    """The d_ff -> d_model projections, in module order: Linear, or GPT-2 style Conv1D ([in, out])."""
    out = []
    for module in model.modules():
        linear = isinstance(module, torch.nn.Linear) and module.in_features == arch.d_ff and module.out_features != arch.d_ff
        conv1d = type(module).__name__ == "Conv1D" and module.weight.shape[0] == arch.d_ff
        if linear or conv1d:
            out.append(module)
    return out


def reference(model: torch.nn.Module, arch: Arch, ids: np.ndarray) -> list[np.ndarray]:
    """The input of every d_ff -> d_model projection, [tokens, d_ff], in call order."""
    captured: list[np.ndarray] = []

    def hook(_module, args):
        captured.append(args[0].detach().reshape(-1, args[0].shape[-1]).numpy().copy())

    handles = [module.register_forward_pre_hook(hook) for module in _down_modules(model, arch)]
    t = torch.from_numpy(ids)
    with torch.no_grad():
        if arch.kind == "seq2seq":
            model(input_ids=t, decoder_input_ids=t)
        else:
            model(input_ids=t)
    for h in handles:
        h.remove()
    return captured


def export(model: torch.nn.Module, arch: Arch, folder: Path, with_past: bool = False) -> dict[str, Path]:
    """optimum export into ``folder``: {"model": ...} or, for seq2seq, {"encoder": ..., "decoder": ...}
    (``with_past``: also "decoder_merged" and "decoder_with_past", optimum's KV-cache variants)."""
    from optimum.exporters.onnx import main_export

    task = {"causal": "text-generation", "encoder": "feature-extraction", "seq2seq": "text2text-generation"}[arch.kind]
    task += "-with-past" if with_past else ""
    model.save_pretrained(folder / "hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(folder / "hf"), output=str(folder / "onnx"), task=task, opset=OPSET, device="cpu",
                    do_validation=False, library_name="transformers")
    out = folder / "onnx"
    if arch.kind == "seq2seq":
        files = {"encoder": out / "encoder_model.onnx", "decoder": out / "decoder_model.onnx"}
        if with_past:
            files.update(decoder_merged=out / "decoder_model_merged.onnx", decoder_with_past=out / "decoder_with_past_model.onnx")
        return files
    return {"model": out / "model.onnx"}


def export_merged(model: torch.nn.Module, arch: Arch, folder: Path) -> Path:
    """A causal model as optimum's merged decoder, the layout of many Hub ONNX repos:
    ``decoder_model_merged.onnx``, an If(use_cache_branch) over the decoder without past (which
    still returns the cache) and the decoder with past, their weights stored once in the outer
    graph (optimum.onnx.merge_decoders, from the two legacy decoders exported with optimum's own
    ONNX config: use_past_in_inputs False and True)."""
    from optimum.exporters.onnx import main_export
    from optimum.exporters.tasks import TasksManager
    from optimum.onnx import merge_decoders

    if arch.kind != "causal":
        raise ValueError("merged decoders are a causal model's layout")
    ctor = TasksManager.get_exporter_config_constructor(exporter="onnx", model=model, task="text-generation-with-past",
                                                        library_name="transformers")
    model.save_pretrained(folder / "hf")
    parts = {}
    for name, past_in in (("decoder_model", False), ("decoder_with_past_model", True)):
        config = ctor(model.config, use_past=True, use_past_in_inputs=past_in)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main_export(str(folder / "hf"), output=str(folder / name), task="text-generation-with-past", opset=OPSET,
                        device="cpu", do_validation=False, no_post_process=True, library_name="transformers",
                        custom_onnx_configs={"model": config})
        parts[name] = folder / name / "model.onnx"
    out = folder / "merged" / "decoder_model_merged.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    merge_decoders(parts["decoder_model"], parts["decoder_with_past_model"], save_path=str(out))
    return out


def incremental_diff(path: Path, ids: np.ndarray) -> float:
    """max |logits| difference at the last position between a merged decoder run on all of
    ``ids`` without past and the same decoder run on the last id with past (the cache its
    no-past branch returned for the ids before): 0 up to rounding when the two branches compute
    the same model."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    past_inputs = [i for i in session.get_inputs() if i.name.startswith("past_key_values")]

    def run(chunk: np.ndarray, past: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        b, t = chunk.shape
        p = 0 if not past else next(iter(past.values())).shape[-2]
        feeds = {"input_ids": chunk, "attention_mask": np.ones((b, p + t), np.int64),
                 "use_cache_branch": np.array([bool(past)])}
        if "position_ids" in {i.name for i in session.get_inputs()}:
            feeds["position_ids"] = np.tile(np.arange(p, p + t), (b, 1))
        for inp in past_inputs:
            if past:
                feeds[inp.name] = past[inp.name]
            else:
                shape = [b if j == 0 else (d if isinstance(d, int) else 0) for j, d in enumerate(inp.shape)]
                feeds[inp.name] = np.zeros(shape, np.float32)
        return dict(zip(names, session.run(None, feeds)))

    full = run(ids, None)
    first = run(ids[:, :-1], None)
    past = {n.replace("present", "past_key_values"): v for n, v in first.items() if n.startswith("present")}
    step = run(ids[:, -1:], past)
    return float(np.abs(step["logits"][:, -1] - full["logits"][:, -1]).max())


def export_dynamo(model: torch.nn.Module, arch: Arch, folder: Path) -> dict[str, Path]:
    """``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript, torch's default exporter):
    input_ids -> logits (or last_hidden_state), dynamic batch and sequence; weights go to external
    data beside the model."""
    if arch.kind == "seq2seq":
        raise ValueError("the dynamo recipe exports single-graph models only")

    class Wrapped(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            if arch.kind == "causal":
                return self.inner(input_ids=input_ids, use_cache=False).logits
            return self.inner(input_ids=input_ids).last_hidden_state

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "model.onnx"
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped(model).eval(), (torch.from_numpy(input_ids()),), str(out), input_names=["input_ids"],
                          dynamo=True, dynamic_shapes={"input_ids": dims}, opset_version=OPSET)
    return {"model": out}


def tap_activations(path: Path, ids: np.ndarray, encoder: Path | None = None) -> tuple[list[int], list[np.ndarray]]:
    """sui-onnx's side: detected widths and the tapped tensors for ``ids``, [tokens, D] each."""
    from sui_onnx.graph import find_taps, load_model, tapped_model
    from sui_onnx.runner import TapRunner

    src = load_model(path)
    taps = find_taps(src.model)
    widths = [t.width for t in taps]
    runner = TapRunner(tapped_model(src, taps).SerializeToString(), [t.tensor for t in taps], "cpu", encoder=encoder,
                       external_folder=src.data_folder)
    outs = runner.run(ids, widths)
    return widths, [np.array(o).reshape(-1, o.shape[-1]) for o in outs]




def _down_matrix(module: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """W [D, m] and bias [m] (zeros when there is none) of a down projection, float64."""
    w = module.weight.detach().double().numpy()
    w = w.T if isinstance(module, torch.nn.Linear) else w  # Linear keeps [m, D], GPT-2's Conv1D [D, m]
    b = module.bias.detach().double().numpy() if getattr(module, "bias", None) is not None else np.zeros(w.shape[1])
    return w, b


def _run(model: torch.nn.Module, arch: Arch, ids: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(ids)
    with torch.no_grad():
        out = model(input_ids=t)
    return (out.logits if arch.kind == "causal" else out.last_hidden_state).double().numpy()


def slim_reference(model: torch.nn.Module, arch: Arch, calib: np.ndarray, ids: np.ndarray, keep: list[np.ndarray],
                   weighted: dict[int, str], ridge: float) -> np.ndarray:
    """What the narrowed model must compute, from PyTorch alone: the method of docs/slim.md written
    out again, on hooked down-projection inputs over ``calib``, for the neurons ``keep`` (per layer).
    Layer i's FFN output becomes h_S B W + b + (mu - mu_S B) W with B = (C_SS + ridge tr(C_SS)/k I)^-1 C_S,:,
    (mu, C) weighted per token by 1 / mean(y^2) (centred for "layer") in the ``weighted`` layers.
    The up and gate projections are not sliced here: the kept neurons' values are the full model's,
    so a narrowed graph must give the same output."""
    downs = _down_modules(model, arch)
    seen: dict[int, tuple[list, list]] = {i: ([], []) for i in range(len(downs))}

    def grab(i):
        def hook(_module, args, output):
            seen[i][0].append(args[0].detach().double().reshape(-1, args[0].shape[-1]).numpy())
            seen[i][1].append(output.detach().double().reshape(-1, output.shape[-1]).numpy())
        return hook

    handles = [m.register_forward_hook(grab(i)) for i, m in enumerate(downs)]
    _run(model, arch, calib)
    for h in handles:
        h.remove()
    fits = []
    for i, module in enumerate(downs):
        h, y = np.concatenate(seen[i][0]), np.concatenate(seen[i][1])
        w_down, bias = _down_matrix(module)
        wt = np.ones(len(h))
        if i in weighted:
            yc = y - y.mean(axis=1, keepdims=True) if weighted[i] == "layer" else y
            wt = 1.0 / np.maximum((yc ** 2).mean(axis=1), 1e-12)
            wt = np.minimum(wt, 1e3 * np.median(wt))
        mu = wt @ h / wt.sum()
        c = ((h - mu) * wt[:, None]).T @ (h - mu) / wt.sum()
        s = np.sort(keep[i])
        css = c[np.ix_(s, s)] + ridge * np.trace(c[np.ix_(s, s)]) / len(s) * np.eye(len(s))
        b_mat = np.linalg.solve(css, c[s])
        w_new = b_mat @ w_down
        fits.append((s, w_new, bias + mu @ w_down - mu[s] @ w_new))

    def replace(i):
        def hook(_module, args, output):
            s, w_new, b_new = fits[i]
            h = args[0].detach().double()
            return (h[..., s] @ torch.from_numpy(w_new) + torch.from_numpy(b_new)).to(output.dtype)
        return hook

    handles = [m.register_forward_hook(replace(i)) for i, m in enumerate(downs)]
    try:
        return _run(model, arch, ids)
    finally:
        for h in handles:
            h.remove()


def slim_check(model: torch.nn.Module, arch: Arch, path: Path, workdir: Path, ratio: float = 0.5,
               save: Path | None = None) -> dict:
    """sui-onnx slim's narrowed model of the export at ``path`` (calibrated on random ids) against
    `slim_reference`: {"widths", "max_abs_diff", "scale"} on other random ids. ``save``: where to
    write the narrowed model too (weights inside the file; tiny models only)."""
    from sui_onnx.analyze import AnalysisOptions
    from sui_onnx.calib import CalibrationSpec
    from sui_onnx.runner import FeedBuilder, create_session
    from sui_onnx.slimming import SlimStudy

    rng = np.random.default_rng(3)
    calib = rng.integers(5, VOCAB, (48, 24)).astype(np.int64)
    ids = rng.integers(5, VOCAB, (2, 24)).astype(np.int64)
    np.save(workdir / "calib.npy", calib)
    study = SlimStudy(path, CalibrationSpec([workdir / "calib.npy"]), AnalysisOptions(device="cpu"))
    widths = study.uniform_widths(ratio=ratio, align=8)
    variant = study.variant(widths, "id")
    data = variant.model.SerializeToString()
    if save is not None:
        save.write_bytes(data)
    session, _ = create_session(data, "cpu", external_folder=study.src.data_folder)
    got = np.asarray(session.run(None, FeedBuilder(session.get_inputs())(ids))[0], dtype=np.float64)
    want = slim_reference(model, arch, calib, ids, variant.keep, dict(study.weighting), study.ridge)
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    return {"widths": [int(x.shape[0]) for x in variant.keep], "expected_widths": widths, "max_abs_diff": diff,
            "scale": float(np.abs(want).max())}


def check(arch: Arch, workdir: Path, exporter: str = "optimum") -> dict:
    """Export (``optimum`` or ``dynamo``), tap and compare: {"widths", "expected_widths",
    "max_abs_diff", "files", "torch_model"}."""
    model = build(arch)
    ids = input_ids()
    ref = reference(model, arch, ids)
    files = export(model, arch, workdir) if exporter == "optimum" else export_dynamo(model, arch, workdir)
    if arch.kind == "seq2seq":
        w_enc, enc = tap_activations(files["encoder"], ids)
        w_dec, dec = tap_activations(files["decoder"], ids, encoder=files["encoder"])
        widths, got = w_enc + w_dec, enc + dec
        expected = [arch.d_ff] * (2 * LAYERS)
    else:
        widths, got = tap_activations(files["model"], ids)
        expected = [arch.d_ff] * LAYERS
    diff = float("inf")
    if len(got) == len(ref) and all(g.shape == r.shape for g, r in zip(got, ref)):
        diff = max(float(np.abs(g - r).max()) for g, r in zip(got, ref))
    return {"widths": widths, "expected_widths": expected, "max_abs_diff": diff, "files": files, "torch_model": model}


def main(argv: list[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    exporter = "optimum"
    if "--dynamo" in args:
        args.remove("--dynamo")
        exporter = "dynamo"
    names = args or [a.name for a in ARCHS if exporter == "optimum" or a.kind != "seq2seq"]
    torch.set_num_threads(2)
    failed = []
    print(f"{'architecture':14s} {'kind':8s} {'taps':>4s} {'width':>6s} {'max |diff|':>11s}  verdict")
    for name in names:
        arch = BY_NAME[name]
        with tempfile.TemporaryDirectory(prefix=f"sui_arch_{name}_") as tmp:
            try:
                res = check(arch, Path(tmp), exporter)
            except Exception as exc:  # report and go on: this is a survey
                failed.append(name)
                print(f"{name:14s} {arch.kind:8s} error: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
                continue
        ok = res["widths"] == res["expected_widths"] and res["max_abs_diff"] < TOLERANCE
        failed += [] if ok else [name]
        width = res["widths"][0] if res["widths"] else 0
        print(f"{name:14s} {arch.kind:8s} {len(res['widths']):4d} {width:6d} {res['max_abs_diff']:11.2e}  "
              f"{'ok' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
