"""Rebuild the committed test fixtures: tiny random-init models with PyTorch reference taps.

Usage (from the repository root)::

    python -m models.fixtures --out tests/fixtures            # all fixtures
    python -m models.fixtures --out /tmp/fx --only gpt2_w128   # just one

Each fixture is a folder ``NAME/`` with

* ``model.onnx`` (plus ``model.onnx_data`` for ``llama_extdata``),
* ``tokenizer.json`` -- the 512-token byte-level BPE of :mod:`models.tokenizer`,
* ``meta.json`` -- architecture, exporter, widths, activation, graph inputs, the ONNX tensor
  names of every tap (``onnx_taps``) and the self-check result,
* ``reference.npz`` -- ``input_ids`` [2, 16] (seeded) and, per layer ``i``, ``post_i`` (input
  of the down-projection, forward pre-hook) and ``pre_i`` (output of the up / gate
  projection, forward hook), float32 [2, 16, d_ff], captured in PyTorch from the very
  weights that were exported.

Models are seeded (``torch.manual_seed(0)`` before construction), so a rebuild reproduces
the same weights on the same torch version. The recipe checks every fixture with
onnxruntime: the tapped ONNX tensors must match the PyTorch hooks to 1e-4 (the int8 fixture
is only reported, quantization changes the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

from models.export import OPSET, check_taps, export_model, find_taps  # noqa: E402
from models.families import FAMILIES, build_model, capture_ffn  # noqa: E402
from models.tokenizer import FIXTURE_TOKENIZER, FIXTURE_VOCAB, ensure_tokenizer  # noqa: E402

TOLERANCE = 1e-4
INPUT_SEED = 1234
INPUT_SHAPE = (2, 16)
N_LAYERS = 2
SIZE_BUDGET = 10 * 2**20


@dataclass(frozen=True)
class FixtureSpec:
    """One fixture: a seeded base model, or a transformation of another fixture."""

    name: str
    family: str
    d_model: int
    d_ff: int
    n_heads: int = 2
    task: str | None = None                 # optimum task override
    source: str | None = None               # derived fixtures: the fixture they transform
    derive: str | None = None               # "ortopt" | "int8" | "extdata"
    notes: str = ""
    extra: dict = field(default_factory=dict)


SPECS: list[FixtureSpec] = [
    FixtureSpec("gpt2_w128", "gpt2", 64, 128, notes="GPT-2 (pre-LN, GELU-tanh 'gelu_new'); "
                "Conv1D layers export as Reshape -> Gemm -> Reshape."),
    FixtureSpec("gpt2_w256", "gpt2", 64, 256, notes="As gpt2_w128 with d_ff 256."),
    FixtureSpec("llama_w128", "llama", 64, 128, notes="LLaMA (RMSNorm, SwiGLU, RoPE, tied embeddings)."),
    FixtureSpec("llama_w256", "llama", 64, 256, notes="As llama_w128 with d_ff 256."),
    FixtureSpec("ngpt_w128", "ngpt", 64, 128, notes="nGPT (models/ngpt.py): no norm layers, unit-norm "
                "hidden states, scaled SwiGLU u*s_u * SiLU(v*s_v*sqrt(d_model)); pre = raw gate "
                "projection output (w_v MatMul) before the s_v scaling. Input input_ids only."),
    FixtureSpec("ngpt_w256", "ngpt", 64, 256, notes="As ngpt_w128 with d_ff 256."),
    FixtureSpec("mixln_w128", "mixln", 64, 128, notes="GPT-2 style Mix-LN (models/mixln.py): block 0 "
                "Post-LN, block 1 Pre-LN; GELU-tanh; exported with torch.onnx; input input_ids only."),
    FixtureSpec("gemma_w128", "gemma", 32, 128, notes="Gemma: GeGLU (gelu_pytorch_tanh on the gate), "
                "RMSNorm with (1 + weight), embeddings scaled by sqrt(d_model)."),
    FixtureSpec("opt_w128", "opt", 32, 128, notes="OPT: ReLU FFN fc1 -> relu -> fc2 on tokens flattened "
                "to [batch*seq, d]; ONNX taps are 2-D [32, d_ff] (reference is reshaped to [2, 16, d_ff])."),
    FixtureSpec("phi3_w128", "phi3", 32, 128, notes="Phi-3: fused gate_up_proj [gate | up] split by "
                "Slice; SwiGLU; pre = the gate half (first d_ff columns)."),
    FixtureSpec("gpt_neox_w128", "gpt_neox", 32, 128, notes="GPT-NeoX: parallel residual, exact GELU "
                "(Erf), partial rotary (25 %), untied embed_out."),
    FixtureSpec("bert_w128", "bert", 32, 128, task="feature-extraction", notes="BERT encoder (post-LN, "
                "exact GELU), optimum task feature-extraction; output last_hidden_state."),
    FixtureSpec("gpt2_ortopt", "gpt2", 64, 128, source="gpt2_w128", derive="ortopt",
                notes="gpt2_w128 through onnxruntime.transformers.optimizer.optimize_model("
                      "model_type='gpt2', opt_level=1): GELU fused; reference = gpt2_w128's."),
    FixtureSpec("bert_ortopt", "bert", 32, 128, source="bert_w128", derive="ortopt",
                notes="bert_w128 through onnxruntime.transformers.optimizer.optimize_model("
                      "model_type='bert', opt_level=1): EmbedLayerNormalization, Attention, BiasGelu, "
                      "SkipLayerNormalization (com.microsoft); reference = bert_w128's.",
                extra={"model_type": "bert"}),
    FixtureSpec("gpt2_int8", "gpt2", 64, 128, source="gpt2_w128", derive="int8",
                notes="gpt2_w128 through onnxruntime.quantization.quantize_dynamic (int8 weights); "
                      "reference = gpt2_w128's float hooks, matches only loosely (see check)."),
    FixtureSpec("llama_extdata", "llama", 64, 128, source="llama_w128", derive="extdata",
                notes="llama_w128 with every initializer in external data model.onnx_data "
                      "(size_threshold=0); load with the file path so the data is found."),
    FixtureSpec("llama_past", "llama", 64, 128, task="text-generation-with-past",
                notes="Same weights as llama_w128, exported with task text-generation-with-past: "
                      "inputs past_key_values.{i}.key/value [batch, heads, past, d_head]; feed "
                      "past length 0 to reproduce the reference."),
]
SPEC_BY_NAME = {s.name: s for s in SPECS}


def fixture_input_ids(vocab: int = FIXTURE_VOCAB) -> np.ndarray:
    """The fixed [2, 16] int64 token ids every reference is computed on."""
    return np.random.default_rng(INPUT_SEED).integers(0, vocab, size=INPUT_SHAPE).astype(np.int64)


@torch.no_grad()
def jitter_vectors_(model: torch.nn.Module, seed: int) -> None:
    """Perturb every 1-D parameter (biases, norm gains, nGPT scales) by a few percent.

    Fresh inits set all biases to 0 and norm gains to 1; exporters then deduplicate the
    identical tensors and share one initializer across layers, which trained models never
    do. A seeded jitter makes every vector distinct (and biases non-zero).
    """
    gen = torch.Generator().manual_seed(seed + 1)
    for p in model.parameters():
        if p.dim() == 1:
            noise = torch.randn(p.shape, generator=gen)
            p.mul_(1 + 0.05 * noise).add_(0.02 * torch.randn(p.shape, generator=gen))


# --------------------------------------------------------------------------- derivations


def derive_ortopt(src: Path, dst: Path, spec: FixtureSpec) -> dict:
    """onnxruntime's transformer optimizer with the fusions of ``spec.extra['model_type']``
    (default GPT-2: fuses the GELU; BERT: also embedding, attention and skip layer norms)."""
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = spec.extra.get("model_type", "gpt2")
    opt = optimize_model(str(src), model_type=model_type, num_heads=spec.n_heads,
                         hidden_size=spec.d_model, opt_level=1)
    opt.save_model_to_file(str(dst))
    graph = onnx.load(str(dst)).graph
    ops = sorted({n.op_type for n in graph.node})
    gelus = [n for n in graph.node if "Gelu" in n.op_type]
    return {"ort_optimizer": {"model_type": model_type, "opt_level": 1,
                              "fused_gelu_ops": sorted({n.op_type for n in gelus}),
                              "fused_gelu_nodes": [n.name for n in gelus],
                              "fused_gelu_inputs": [list(n.input) for n in gelus],
                              "op_types": ops}}


def ortopt_taps(path: Path) -> dict[str, str]:
    """post_i = output of the i-th fused GELU node. There is no pre tensor any more: the
    c_fc bias moved into FastGelu's second input, so only ``MatMul_out`` (pre minus bias)
    exists as a tensor."""
    graph = onnx.load(str(path), load_external_data=False).graph
    gelus = [n for n in graph.node if "Gelu" in n.op_type]
    return {f"post_{i}": n.output[0] for i, n in enumerate(gelus)}


def derive_int8(src: Path, dst: Path, spec: FixtureSpec) -> dict:
    """Dynamic int8 weight quantization (DynamicQuantizeLinear + MatMulInteger)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    ops = sorted({n.op_type for n in onnx.load(str(dst)).graph.node})
    quant = [op for op in ops if "Integer" in op or "Quant" in op]
    return {"quantization": {"method": "quantize_dynamic", "weight_type": "QInt8",
                             "quant_op_types": quant, "op_types": ops}}


def derive_extdata(src: Path, dst: Path, spec: FixtureSpec) -> dict:
    """Move every initializer into one external data file next to the model."""
    model = onnx.load(str(src))
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx_data", size_threshold=0)
    return {"external_data": "model.onnx_data"}


DERIVATIONS: dict[str, Callable[[Path, Path, FixtureSpec], dict]] = {
    "ortopt": derive_ortopt, "int8": derive_int8, "extdata": derive_extdata}


# --------------------------------------------------------------------------- building


def _graph_io(path: Path) -> tuple[list[str], list[str]]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return [i.name for i in graph.input], [o.name for o in graph.output]


def build_fixture(spec: FixtureSpec, out_root: Path, tokenizer: Path | None = None) -> dict:
    """Build one fixture folder under ``out_root`` and return its check record.

    A derived fixture needs its source fixture already built in ``out_root``.
    """
    fam = FAMILIES[spec.family]
    tokenizer = tokenizer or ensure_tokenizer(FIXTURE_VOCAB, FIXTURE_TOKENIZER)
    out = out_root / spec.name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ids = fixture_input_ids()
    extra: dict = {}

    if spec.source is None:
        model = build_model(spec.family, spec.d_model, N_LAYERS, spec.d_ff, FIXTURE_VOCAB,
                            spec.n_heads, seed=0)
        jitter_vectors_(model, seed=0)
        reference = capture_ffn(model, spec.family, torch.from_numpy(ids))
        export_model(model, spec.family, out / "model.onnx", FIXTURE_VOCAB, task=spec.task)
        exporter = fam.exporter
    else:
        src_dir = out_root / spec.source
        with np.load(src_dir / "reference.npz") as z:
            reference = {k: z[k] for k in z.files if k != "input_ids"}
        with tempfile.TemporaryDirectory() as tmp:   # derive from a plain copy of the source
            src = Path(tmp) / "model.onnx"
            shutil.copyfile(src_dir / "model.onnx", src)
            extra = DERIVATIONS[spec.derive](src, out / "model.onnx", spec)
        exporter = f"{fam.exporter}+{spec.derive}"

    shutil.copyfile(tokenizer, out / "tokenizer.json")
    np.savez(out / "reference.npz", input_ids=ids, **reference)

    # Self-check: tap names (the source's, looked up in this graph) against the hooks.
    base = out_root / spec.source if spec.source else out
    taps = find_taps(base / "model.onnx", spec.family, N_LAYERS)
    expected_missing: set[str] = set()
    if spec.derive == "ortopt":
        taps.update(ortopt_taps(out / "model.onnx"))
        expected_missing = {k for k in taps if k.startswith("pre_")}
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    produced = {o for n in graph.node for o in n.output}
    live = {k: v for k, v in taps.items() if v in produced}
    missing = set(taps) - set(live)
    diffs = check_taps(out / "model.onnx", live, reference, ids) if live else {}
    strict = spec.derive != "int8"
    ok = (not strict) or (missing <= expected_missing and len(live) > 0
                          and all(d < TOLERANCE for d in diffs.values()))
    check = {"tolerance": TOLERANCE if strict else None, "strict": strict,
             "max_abs_diff": {k: float(f"{v:.3g}") for k, v in sorted(diffs.items())},
             "missing_taps": sorted(missing), "passed": bool(ok)}

    inputs, outputs = _graph_io(out / "model.onnx")
    meta = {
        "arch": spec.family, "exporter": exporter,
        "task": spec.task or (fam.optimum_task if fam.exporter == "optimum" else None),
        "opset": OPSET, "n_layers": N_LAYERS, "d_model": spec.d_model, "d_ff": spec.d_ff,
        "n_heads": spec.n_heads, "vocab": FIXTURE_VOCAB,
        "site_post_widths": [spec.d_ff] * N_LAYERS, "activation": fam.activation,
        "activation_fn": fam.activation_fn,
        "gated": fam.activation in ("swiglu", "geglu"),
        "inputs": inputs, "outputs": outputs,
        "onnx_taps": live, "reference_keys": sorted(reference),
        "reference_input": {"key": "input_ids", "shape": list(INPUT_SHAPE), "seed": INPUT_SEED,
                            "attention_mask": "ones", "position_ids": "arange",
                            "past_length": 0},
        "seed": 0, "source_fixture": spec.source, "check": check, "notes": spec.notes,
        "versions": _versions(), **extra,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return {"name": spec.name, "meta": meta,
            "bytes": sum(p.stat().st_size for p in out.iterdir())}


def _versions() -> dict[str, str]:
    import onnxruntime
    import optimum
    import transformers
    return {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
            "optimum": getattr(optimum, "__version__", "2.1"), "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def print_table(records: list[dict]) -> None:
    """One line per fixture: exporter, size, tap diffs and verdict."""
    print(f"{'fixture':15s} {'exporter':22s} {'KB':>6s} {'taps':>5s} {'max|post|':>10s} "
          f"{'max|pre|':>10s}  check")
    for r in records:
        m, c = r["meta"], r["meta"]["check"]
        d = c["max_abs_diff"]
        post = max((v for k, v in d.items() if k.startswith("post")), default=float("nan"))
        pre = max((v for k, v in d.items() if k.startswith("pre")), default=float("nan"))
        verdict = ("ok" if c["passed"] else "FAIL") if c["strict"] else "loose (int8)"
        if c["missing_taps"]:
            verdict += f"; missing {','.join(c['missing_taps'])}"
        print(f"{r['name']:15s} {m['exporter']:22s} {r['bytes'] / 1024:6.0f} "
              f"{len(m['onnx_taps']):5d} {post:10.2e} {pre:10.2e}  {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    parser.add_argument("--only", nargs="*", help="fixture names (sources are built as needed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    names = args.only or [s.name for s in SPECS]
    wanted = []
    for name in names:
        spec = SPEC_BY_NAME[name]
        if spec.source and spec.source not in wanted:
            wanted.append(spec.source)
        if name not in wanted:
            wanted.append(name)
    records = [build_fixture(SPEC_BY_NAME[n], args.out) for n in wanted]
    print_table(records)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"total size of {args.out}: {total / 2**20:.2f} MiB")
    failed = [r["name"] for r in records if not r["meta"]["check"]["passed"]]
    if failed:
        raise SystemExit(f"self-check failed for {failed}")
    if total > SIZE_BUDGET:
        raise SystemExit(f"fixtures exceed the {SIZE_BUDGET / 2**20:.0f} MiB budget")


if __name__ == "__main__":
    main()
