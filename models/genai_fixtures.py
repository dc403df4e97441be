"""Rebuild the onnxruntime-genai fixtures: tiny random-init LLaMA through the genai model builder.

onnxruntime-genai's model builder (the tool behind the Phi-3 / Llama / Qwen ONNX releases that
onnxruntime-genai runs) needs transformers 5.x, which the pinned export stack of this repo
(transformers 4.57, optimum 2.1) cannot share a venv with. So this recipe runs in a venv of its
own; it imports nothing from the rest of ``models/`` but :mod:`models.genai_fixtures` itself::

    python -m venv /tmp/genai-venv
    /tmp/genai-venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    /tmp/genai-venv/bin/pip install transformers==5.24.0 onnxruntime-genai==0.18.0 \\
        onnxruntime==1.32.0 onnx==1.23.2 numpy
    /tmp/genai-venv/bin/python -m models.genai_fixtures --out tests/fixtures/deployed

(pin the CPU torch: a bare ``torch`` pulls a multi-GB CUDA build.) Nothing is downloaded: the
model is a seeded random-init ``LlamaConfig`` saved locally with ``save_pretrained`` together
with the fixtures' 512-token tokenizer.json, and the builder is run on that folder::

    python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p fp32|int4 -e cpu -c CACHE

Each of ``genai_fp32/`` and ``genai_int4/`` then holds the builder's output as it ships
(``model.onnx``, ``model.onnx.data``, ``genai_config.json``, tokenizer files) plus

* ``reference.npz`` -- ``input_ids`` [2, 16] (seed 1234, as models/fixtures.py) and per layer
  ``post_i`` (input of down_proj, forward pre-hook) and ``pre_i`` (gate_proj output, forward
  hook), float32 [2, 16, d_ff], captured in PyTorch on the weights the builder read
  (attention mask all ones, positions 0..15, empty past);
* ``meta.json`` -- architecture, builder command and versions, graph inputs, the ONNX tensor
  names of the taps, and the recipe's onnxruntime self-check (fp32: max abs diff < 1e-4;
  int4: measured and recorded, MatMulNBits with int8 activations on CPU).

What the builder writes: GroupQueryAttention with ``do_rotary`` (positions from the mask, no
position_ids input), SkipSimplifiedLayerNormalization, MatMulNBits for int4, and KV-cache inputs
``past_key_values.N.key/value [batch, kv_heads, past, 'kv_cache_dim']`` whose head dimension is
symbolic (genai_config.json gives it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = REPO_ROOT / "tests" / "fixtures" / "llama_w128" / "tokenizer.json"  # the 512-token BPE
INPUT_SEED, INPUT_SHAPE, VOCAB = 1234, (2, 16), 512
TOLERANCE = 1e-4
CONFIG = dict(hidden_size=16, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, head_dim=16, max_position_embeddings=256, hidden_act="silu",
              tie_word_embeddings=False, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0,
              pad_token_id=0, rms_norm_eps=1e-6)
PRECISIONS = ("fp32", "int4")


def input_ids() -> np.ndarray:
    """The [2, 16] token ids of every fixture reference (models/fixtures.fixture_input_ids)."""
    return np.random.default_rng(INPUT_SEED).integers(0, VOCAB, size=INPUT_SHAPE).astype(np.int64)


def build_hf(folder: Path):
    """The seeded random-init LLaMA, saved to ``folder`` with the fixture tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # distinct norm gains (fresh inits are all ones), as models/fixtures.py
        for p in model.parameters():
            if p.dim() == 1:
                p.mul_(1 + 0.05 * torch.randn(p.shape, generator=gen)).add_(0.02 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(folder)
    shutil.copyfile(TOKENIZER, folder / "tokenizer.json")
    return model


def capture(model, ids: np.ndarray) -> dict[str, np.ndarray]:
    """post_i / pre_i of every layer's MLP, by PyTorch hooks."""
    import torch

    got: dict[str, np.ndarray] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(
            lambda _m, args, i=i: got.__setitem__(f"post_{i}", args[0].detach().float().numpy().copy())))
        handles.append(layer.mlp.gate_proj.register_forward_hook(
            lambda _m, _a, out, i=i: got.__setitem__(f"pre_{i}", out.detach().float().numpy().copy())))
    try:
        with torch.no_grad():
            x = torch.from_numpy(ids)
            model(input_ids=x, attention_mask=torch.ones_like(x))
    finally:
        for h in handles:
            h.remove()
    return got


def run_builder(hf: Path, out: Path, precision: str, cache: Path) -> None:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(cache)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"builder failed ({precision}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def onnx_taps(model_path: Path, n_layers: int) -> dict[str, str]:
    """The builder's tensors for post_i (down_proj input) and pre_i (gate_proj output): the
    recipe knows the builder's node names (sui-onnx itself finds them structurally)."""
    import onnx

    nodes = onnx.load(str(model_path), load_external_data=False).graph.node

    def node(scope: str) -> onnx.NodeProto:  # MatMul (fp32) or MatMul_Q4 (int4, MatMulNBits)
        found = [n for n in nodes if n.name.startswith(scope + "/MatMul")]
        if len(found) != 1:
            raise SystemExit(f"{model_path}: expected one {scope}/MatMul node, found {[n.name for n in found]}")
        return found[0]

    taps = {}
    for i in range(n_layers):
        taps[f"post_{i}"] = node(f"/model/layers.{i}/mlp/down_proj").input[0]
        taps[f"pre_{i}"] = node(f"/model/layers.{i}/mlp/gate_proj").output[0]
    return taps


def check(model_path: Path, taps: dict[str, str], reference: dict[str, np.ndarray], ids: np.ndarray,
          head_size: int) -> dict[str, float]:
    """Max abs diff of onnxruntime's tap tensors against the hooks (empty past of the real head size)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    for key in sorted(taps):
        model.graph.output.append(onnx.ValueInfoProto(name=taps[key]))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {}
    for inp in sess.get_inputs():
        if inp.name == "input_ids":
            feeds[inp.name] = ids
        elif inp.name == "attention_mask":
            feeds[inp.name] = np.ones_like(ids)
        else:  # past_key_values.N.key/value [batch, kv_heads, 0, head_size]
            feeds[inp.name] = np.zeros((ids.shape[0], inp.shape[1], 0, head_size), np.float32)
    keys = sorted(taps)
    outs = sess.run([taps[k] for k in keys], feeds)
    return {k: float(np.abs(o - reference[k]).max()) for k, o in zip(keys, outs)}


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxruntime_genai
    import torch
    import transformers

    return {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
            "onnxruntime_genai": onnxruntime_genai.__version__, "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "fixtures" / "deployed")
    args = parser.parse_args(argv)
    import onnx
    import torch

    torch.set_num_threads(2)
    ids = input_ids()
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf"
        model = build_hf(hf)
        reference = capture(model, ids)
        for precision in PRECISIONS:
            out = args.out / f"genai_{precision}"
            if out.exists():
                shutil.rmtree(out)
            run_builder(hf, out, precision, Path(tmp) / "cache")
            config = json.loads((out / "genai_config.json").read_text())
            head_size = int(config["model"]["decoder"]["head_size"])
            taps = onnx_taps(out / "model.onnx", CONFIG["num_hidden_layers"])
            diffs = check(out / "model.onnx", taps, reference, ids, head_size)
            scale = {k: float(np.abs(reference[k]).max()) for k in diffs}
            strict = precision == "fp32"
            passed = all(d < TOLERANCE for d in diffs.values()) if strict else True
            graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
            np.savez(out / "reference.npz", input_ids=ids, **reference)
            meta = {
                "arch": "llama", "exporter": f"onnxruntime-genai builder -p {precision} -e cpu",
                "precision": precision, "n_layers": CONFIG["num_hidden_layers"], "d_model": CONFIG["hidden_size"],
                "d_ff": CONFIG["intermediate_size"], "n_heads": CONFIG["num_attention_heads"],
                "kv_heads": CONFIG["num_key_value_heads"], "head_size": head_size, "vocab": VOCAB,
                "site_post_widths": [CONFIG["intermediate_size"]] * CONFIG["num_hidden_layers"],
                "activation": "swiglu", "inputs": [i.name for i in graph.input],
                "op_types": sorted({f"{n.domain}:{n.op_type}" if n.domain else n.op_type for n in graph.node}),
                "onnx_taps": taps,
                "reference_input": {"key": "input_ids", "shape": list(INPUT_SHAPE), "seed": INPUT_SEED,
                                    "attention_mask": "ones", "past_length": 0},
                "check": {"tolerance": TOLERANCE if strict else None, "strict": strict,
                          "max_abs_diff": {k: float(f"{v:.3g}") for k, v in sorted(diffs.items())},
                          "max_abs_reference": {k: float(f"{v:.3g}") for k, v in sorted(scale.items())},
                          "passed": passed},
                "notes": "tiny random-init LLaMA (models/genai_fixtures.py) through the onnxruntime-genai "
                         "model builder; reference = PyTorch hooks on the weights the builder read",
                "versions": versions(),
            }
            (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
            size = sum(p.stat().st_size for p in out.iterdir())
            worst = max(diffs.values())
            print(f"genai_{precision}: {size / 1024:.0f} KiB, max |onnx - hooks| {worst:.3g} "
                  f"(max |ref| {max(scale.values()):.3g}) {'ok' if passed else 'FAIL'}")
            if not passed:
                raise SystemExit(f"self-check failed for genai_{precision}")


if __name__ == "__main__":
    main()
