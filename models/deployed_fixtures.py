"""Lay out a committed fixture as users download it: the transformers.js repo layout and the
Hugging Face cache layout. Needs onnx and onnxruntime only (no torch): the tests build both in a
temporary folder, so neither adds bytes to tests/fixtures (which test_fixture_recipes.py keeps
under 10 MiB; the genai and bert_ortopt fixtures took most of what was left).

Usage (from the repository root)::

    python -m models.deployed_fixtures --out /tmp/deployed               # both layouts
    python -m models.deployed_fixtures --out /tmp/deployed --check       # and compare with the hooks

The transformers.js layout (``transformers_js/``), as transformers.js and many Hub ONNX repos
publish a model::

    config.json  tokenizer.json        # the repo folder
    onnx/model.onnx                    # fp32: tests/fixtures/llama_w128/model.onnx (optimum export)
    onnx/model_quantized.onnx          # onnxruntime.quantization.quantize_dynamic, uint8 weights (q8)
    onnx/model_fp16.onnx               # onnxruntime.transformers.float16, keep_io_types (fp32 in/out)
    onnx/model_q4.onnx                 # MatMulNBitsQuantizer: 4-bit MatMulNBits, block 32, symmetric

The Hugging Face cache layout (``hub/models--sui--tiny-llama/``) of tests/fixtures/llama_extdata
(model.onnx, its external data model.onnx_data, tokenizer.json)::

    blobs/<sha256 of each file>
    refs/main                          # the revision
    snapshots/<revision>/model.onnx -> ../../blobs/<sha256>   (relative symlinks, as huggingface_hub)

The reference for every variant is the source fixture's ``reference.npz`` (PyTorch hooks on
the fp32 weights): fp32 agrees to 1e-4; the quantized and fp16 variants only within what
``--check`` measures (recorded in docs/deployed.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
TJS_SOURCE = FIXTURES / "llama_w128"
HUB_SOURCE = FIXTURES / "llama_extdata"
HUB_REPO = "models--sui--tiny-llama"
HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"
VARIANTS = ("model", "model_quantized", "model_fp16", "model_q4")


def quantized(src: Path, dst: Path) -> dict:
    """int8 dynamic quantization as transformers.js' ``q8`` (uint8 weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8)
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QUInt8"}


def fp16(src: Path, dst: Path) -> dict:
    """Weights and activations in float16; the graph's inputs and outputs stay as they were."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
    return {"method": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": True}


def q4(src: Path, dst: Path) -> dict:
    """4-bit weights in com.microsoft MatMulNBits (onnxruntime.quantization)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quant = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=32, is_symmetric=True)
    quant.process()
    quant.model.save_model_to_file(str(dst), use_external_data_format=False)
    return {"method": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer",
            "block_size": 32, "is_symmetric": True}


DERIVE = {"model_quantized": quantized, "model_fp16": fp16, "model_q4": q4}


def build_transformers_js(out: Path, source: Path = TJS_SOURCE) -> dict[str, dict]:
    """Write the transformers.js layout of fixture ``source`` to ``out``; returns how each
    variant was made."""
    import logging

    if out.exists():
        shutil.rmtree(out)
    (out / "onnx").mkdir(parents=True)
    meta = json.loads((source / "meta.json").read_text())
    config = {"model_type": meta["arch"], "hidden_size": meta["d_model"], "intermediate_size": meta["d_ff"],
              "num_hidden_layers": meta["n_layers"], "num_attention_heads": meta["n_heads"],
              "vocab_size": meta["vocab"], "transformers.js_config": {"dtype": "fp32"}}
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    shutil.copyfile(source / "tokenizer.json", out / "tokenizer.json")
    shutil.copyfile(source / "model.onnx", out / "onnx" / "model.onnx")
    made = {"model": {"method": f"copy of {source.name}/model.onnx"}}
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    for name, derive in DERIVE.items():
        made[name] = derive(out / "onnx" / "model.onnx", out / "onnx" / f"{name}.onnx")
    return made


def build_hub_cache(cache: Path, source: Path = HUB_SOURCE, files: tuple[str, ...] = ("model.onnx", "model.onnx_data",
                    "tokenizer.json")) -> Path:
    """Lay ``source``'s files out as huggingface_hub caches a repo under ``cache``; returns the
    snapshot folder."""
    repo = cache / HUB_REPO
    blobs, snapshot = repo / "blobs", repo / "snapshots" / HUB_REVISION
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(HUB_REVISION)
    for name in files:
        data = (source / name).read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def check_variants(repo: Path, source: Path = TJS_SOURCE) -> dict[str, dict[str, float]]:
    """Max abs difference of each variant's tap tensors (the source's recorded ``onnx_taps``)
    from the source's PyTorch hooks."""
    import onnxruntime as ort

    meta = json.loads((source / "meta.json").read_text())
    ref = np.load(source / "reference.npz")
    ids = ref["input_ids"]
    out = {}
    for name in VARIANTS:
        model = onnx.load(str(repo / "onnx" / f"{name}.onnx"))
        produced = {o for n in model.graph.node for o in n.output}
        taps = {k: v for k, v in sorted(meta["onnx_taps"].items()) if v in produced}
        for tensor in taps.values():
            model.graph.output.append(onnx.ValueInfoProto(name=tensor))
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        b, t = ids.shape
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                 "position_ids": np.tile(np.arange(t, dtype=np.int64), (b, 1))}
        got = sess.run(list(taps.values()), {i.name: feeds[i.name] for i in sess.get_inputs()})
        out[name] = {k: float(np.abs(np.asarray(v, np.float32) - ref[k]).max()) for k, v in zip(taps, got)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--check", action="store_true", help="compare every variant's taps with the hooks")
    args = parser.parse_args(argv)
    made = build_transformers_js(args.out / "transformers_js")
    snapshot = build_hub_cache(args.out / "hub")
    print(f"transformers.js layout: {args.out / 'transformers_js'} ({', '.join(made)})")
    print(f"Hugging Face cache snapshot: {snapshot}")
    if args.check:
        for name, diffs in check_variants(args.out / "transformers_js").items():
            print(f"  onnx/{name}.onnx: max |onnx - hooks| {max(diffs.values()):.3g} over {len(diffs)} taps")


if __name__ == "__main__":
    main()
