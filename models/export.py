"""Export models to ONNX and check FFN taps against PyTorch with onnxruntime.

* :func:`export_optimum` -- HuggingFace families through ``optimum.exporters.onnx.main_export``
  (TorchScript-based exporter; ``--optimize`` is never used, so node names keep their
  module scopes such as ``/transformer/h.0/mlp/c_proj/Gemm``).
* :func:`export_torch` -- the plain torch modules (nGPT, Mix-LN) through
  ``torch.onnx.export(..., dynamo=False)``, input ``input_ids`` and output ``logits`` with
  dynamic batch / sequence axes; a tied embedding's constant-folded transposed copy is
  replaced by a ``Transpose`` node, as optimum does.
* :func:`find_taps` -- the ONNX tensor names of each layer's post / pre site, located from
  the module scopes in node names. This is a recipe self-check only: the package has its
  own structural detector.
* :func:`check_taps` -- add the taps as graph outputs of a temporary copy, run onnxruntime
  and compare with the PyTorch hook captures.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from models.families import FAMILIES  # noqa: E402

OPSET = 18


# --------------------------------------------------------------------------- exporting


def export_optimum(model: nn.Module, family: str, out_path: Path, task: str | None = None) -> Path:
    """Export a transformers model to a single ``out_path`` ONNX file with optimum."""
    from optimum.exporters.onnx import main_export

    task = task or FAMILIES[family].optimum_task
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sui_export_") as tmp:
        src, dst = Path(tmp) / "hf", Path(tmp) / "onnx"
        model.save_pretrained(src)
        main_export(str(src), output=str(dst), task=task, opset=OPSET, device="cpu",
                    do_validation=False, no_post_process=False, library_name="transformers")
        onnx_files = sorted(dst.glob("*.onnx"))
        if len(onnx_files) != 1:
            raise RuntimeError(f"optimum wrote {[p.name for p in onnx_files]}, expected one model")
        if any(dst.glob("*.onnx_data")) or any(dst.glob("*.onnx.data")):
            raise RuntimeError("optimum wrote external data; the fixture models must be tiny")
        shutil.copyfile(onnx_files[0], out_path)
    return out_path


def export_torch(model: nn.Module, out_path: Path, vocab: int, opset: int = OPSET) -> Path:
    """Export a plain torch LM (``input_ids -> logits``) with the TorchScript exporter."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(0))
    axes = {0: "batch_size", 1: "sequence_length"}
    torch.onnx.export(model.eval(), (dummy,), str(out_path), input_names=["input_ids"],
                      output_names=["logits"], dynamic_axes={"input_ids": axes, "logits": axes},
                      opset_version=opset, do_constant_folding=True, dynamo=False)
    dedupe_transposed_initializers(out_path)   # tied embeddings: store the matrix once
    return out_path


def export_model(model: nn.Module, family: str, out_path: Path, vocab: int,
                 task: str | None = None) -> Path:
    """Export with the family's exporter (optimum for HF families, torch.onnx otherwise)."""
    if FAMILIES[family].exporter == "optimum":
        return export_optimum(model, family, out_path, task)
    return export_torch(model, out_path, vocab)


# --------------------------------------------------------------------------- feeding


def onnx_feeds(model_path: Path, input_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs for any of our exports: ids, all-ones mask, positions, zero token types, empty KV."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    b, t = input_ids.shape
    feeds: dict[str, np.ndarray] = {}
    for inp in sess.get_inputs():
        if inp.name == "input_ids":
            feeds[inp.name] = input_ids.astype(np.int64)
        elif inp.name == "attention_mask":
            feeds[inp.name] = np.ones((b, t), dtype=np.int64)
        elif inp.name == "position_ids":
            feeds[inp.name] = np.tile(np.arange(t, dtype=np.int64), (b, 1))
        elif inp.name == "token_type_ids":
            feeds[inp.name] = np.zeros((b, t), dtype=np.int64)
        elif inp.name.startswith("past_key_values"):
            _, heads, _, d_head = inp.shape   # [batch, heads, past_len, d_head]
            feeds[inp.name] = np.zeros((b, heads, 0, d_head), dtype=np.float32)
        else:
            raise ValueError(f"do not know how to feed input {inp.name!r}")
    return feeds


# --------------------------------------------------------------------------- taps


def _scope(family: str, layer: int, rel: str) -> str:
    """Node-name fragment of a module scope, e.g. ``/h.0/mlp/c_proj/``.

    Only the last component of the block-list path is used: exporters may drop the outer
    wrapper (optimum's OPT export names nodes ``/decoder/layers.0/...``, not ``/model/...``).
    """
    fam = FAMILIES[family]
    return "/" + fam.layers.rsplit(".", 1)[-1] + f".{layer}/" + rel.replace(".", "/") + "/"


def _constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Initializers and tensors computed from constants only (Constant, Identity chains)."""
    const = {i.name for i in graph.initializer}
    for n in graph.node:       # nodes are topologically sorted
        if n.op_type == "Constant" or (n.op_type == "Identity" and n.input[0] in const):
            const.update(n.output)
    return const


def _scope_io(graph: onnx.GraphProto, scope: str) -> tuple[list[str], list[str]]:
    """Non-constant tensors entering, and tensors leaving, the nodes whose name has ``scope``."""
    const = _constant_tensors(graph)
    inside = [n for n in graph.node if scope in n.name]
    if not inside:
        raise KeyError(f"no ONNX node in scope {scope}")
    made = {o for n in inside for o in n.output}
    entering: list[str] = []
    for n in inside:
        for x in n.input:
            if x and x not in made and x not in const and x not in entering:
                entering.append(x)
    leaving: list[str] = []
    for n in graph.node:
        if scope not in n.name:
            for x in n.input:
                if x in made and x not in leaving:
                    leaving.append(x)
    graph_outputs = {o.name for o in graph.output}
    leaving += [o for o in made if o in graph_outputs and o not in leaving]
    return entering, leaving


def _gate_half(graph: onnx.GraphProto, fused: str) -> str:
    """Name of the first half of a fused [gate | up] tensor (Split output 0 or Slice from 0)."""
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    for n in graph.node:
        if not n.input or n.input[0] != fused:
            continue
        if n.op_type == "Split":
            return n.output[0]
        if n.op_type == "Slice" and n.input[1] in consts and int(np.ravel(consts[n.input[1]])[0]) == 0:
            return n.output[0]
    raise KeyError(f"no Split / Slice(start=0) consumer of {fused}")


def find_taps(model_path: Path, family: str, n_layers: int) -> dict[str, str]:
    """Map ``post_i`` / ``pre_i`` to ONNX tensor names for one of our exports."""
    fam = FAMILIES[family]
    graph = onnx.load(str(model_path), load_external_data=False).graph
    taps = {}
    for i in range(n_layers):
        entering, _ = _scope_io(graph, _scope(family, i, fam.down))
        _, leaving = _scope_io(graph, _scope(family, i, fam.pre))
        if len(entering) != 1 or len(leaving) != 1:
            raise RuntimeError(f"layer {i}: ambiguous taps, in={entering} out={leaving}")
        taps[f"post_{i}"] = entering[0]
        taps[f"pre_{i}"] = _gate_half(graph, leaving[0]) if fam.pre_fused_halves else leaving[0]
    return taps


def run_with_taps(model_path: Path, tensor_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a copy of the model with ``tensor_names`` added as graph outputs."""
    import onnxruntime as ort

    model = onnx.load(str(model_path))            # loads external data too
    present = {o.name for o in model.graph.output}
    for name in tensor_names:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(tensor_names, feeds)


def check_taps(model_path: Path, taps: dict[str, str], reference: dict[str, np.ndarray],
               input_ids: np.ndarray) -> dict[str, float]:
    """Max abs difference between each ONNX tap and its PyTorch reference (same key)."""
    keys = sorted(taps)
    outs = run_with_taps(model_path, [taps[k] for k in keys], onnx_feeds(model_path, input_ids))
    diffs = {}
    for key, got in zip(keys, outs):
        ref = reference[key]
        diffs[key] = float(np.abs(got.reshape(ref.shape) - ref).max())
    return diffs


def dedupe_transposed_initializers(model_path: Path) -> int:
    """Replace initializers that are exact transposes of another one by a ``Transpose`` node.

    The TorchScript exporter constant-folds ``lm_head.weight = wte.weight`` (tied embeddings)
    into a second, transposed copy of the embedding matrix. Rewriting it as
    ``Transpose(wte)`` halves the embedding storage without changing any output. Returns the
    number of initializers replaced; the file is rewritten in place.
    """
    model = onnx.load(str(model_path))
    graph = model.graph
    mats = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer if len(i.dims) == 2}
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, arr in mats.items():
        by_shape.setdefault(arr.shape, []).append(name)
    replace: dict[str, str] = {}
    for name, arr in mats.items():
        if arr.shape[0] == arr.shape[1] or name in replace.values():
            continue
        for other in by_shape.get(arr.shape[::-1], []):
            if other not in replace and other != name and np.array_equal(mats[other], arr.T):
                replace[name] = other
                break
    if not replace:
        return 0
    keep = []
    for init in graph.initializer:
        if init.name not in replace:
            keep.append(onnx.TensorProto())
            keep[-1].CopyFrom(init)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = [onnx.helper.make_node("Transpose", [src], [dup], name=f"/dedupe/Transpose_{k}", perm=[1, 0])
             for k, (dup, src) in enumerate(replace.items())]
    for n in reversed(nodes):
        graph.node.insert(0, n)
    onnx.checker.check_model(model)
    onnx.save(model, str(model_path))
    return len(replace)
