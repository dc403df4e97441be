"""One measured mode of bench_runner.py, run in its own process so peak RSS is its own.

Prints one JSON line: {"mode", "tokens", "wall_s", "peak_rss_mib"}.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batches(ids: np.ndarray, batch_size: int):
    for i in range(0, len(ids), batch_size):
        yield np.ascontiguousarray(ids[i : i + batch_size], dtype=np.int64)


def plain_onnxruntime(model: Path, ids: np.ndarray, batch_size: int) -> None:
    """(a) inference of the untapped model, all its outputs, the same batches and session options."""
    from sui_onnx.runner import FeedBuilder, create_session

    sess, _ = create_session(model, "cpu")
    feed = FeedBuilder(sess.get_inputs())
    for b in batches(ids, batch_size):
        sess.run(None, feed(b))


def numpy_gram(widths: list[int], ids: np.ndarray, batch_size: int) -> None:
    """(g) one float32 X^T X per layer per batch into float64: the reduction no exact method avoids."""
    rng = np.random.default_rng(0)
    rows = batch_size * ids.shape[1]
    xs = {w: rng.standard_normal((rows, w), dtype=np.float32) for w in set(widths)}
    grams = [np.zeros((w, w)) for w in widths]
    for b in batches(ids, batch_size):
        n = b.size
        for w, g in zip(widths, grams):
            x = xs[w][:n]
            g += x.T @ x


def torch_hooks(hf_dir: Path, ids: np.ndarray, batch_size: int) -> None:
    """(c) the way the paper's authors measure: HF model, forward pre-hooks on the down-projection,
    float64 covariance in torch, torch.linalg.eigvalsh."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from models.families import ffn_modules

    family = "llama" if model.config.model_type == "llama" else "gpt2"
    stats = {}

    def hook(idx):
        def fn(module, inputs):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            n, s, g = stats.get(idx, (0, 0.0, 0.0))
            stats[idx] = (n + x.shape[0], s + x.sum(0), g + x.T @ x)
        return fn

    for i, (down, _) in enumerate(ffn_modules(model, family)):
        down.register_forward_pre_hook(hook(i))
    with torch.inference_mode():
        for b in batches(ids, batch_size):
            model(torch.from_numpy(b))
        for n, s, g in stats.values():
            cov = (g - torch.outer(s, s) / n) / (n - 1)
            torch.linalg.eigvalsh(cov)


def in_graph_reduction(model: Path, ids: np.ndarray, batch_size: int) -> None:
    """(b_graph) the alternative reduction: MatMul(Xc^T, Xc), ReduceMean and ReduceSum nodes added
    to the tapped graph so only D x D leaves onnxruntime; batch statistics merged exactly on the
    host (per-batch centring, Chan's merge). Measured to decide between the two ways."""
    from onnx import TensorProto, helper

    from sui_onnx.graph import find_taps, load_model, tapped_model
    from sui_onnx.runner import FeedBuilder, create_session
    from sui_onnx.spectrum import CovarianceAccumulator

    src = load_model(model)
    taps = find_taps(src.model)
    m = tapped_model(src, taps)
    g = m.graph
    del g.output[:]
    g.initializer.append(helper.make_tensor("sui_rows_shape", TensorProto.INT64, [2], [-1, 0]))
    outs = []
    for i, t in enumerate(taps):
        p = f"sui_reduce_{i}"
        g.initializer.append(helper.make_tensor(f"{p}_shape", TensorProto.INT64, [2], [-1, t.width]))
        g.node.extend([
            helper.make_node("Reshape", [t.tensor, f"{p}_shape"], [f"{p}_x"]),
            helper.make_node("ReduceMean", [f"{p}_x"], [f"{p}_mean"], axes=[0], keepdims=1),
            helper.make_node("Sub", [f"{p}_x", f"{p}_mean"], [f"{p}_xc"]),
            helper.make_node("Transpose", [f"{p}_xc"], [f"{p}_xt"], perm=[1, 0]),
            helper.make_node("MatMul", [f"{p}_xt", f"{p}_xc"], [f"{p}_gram"]),
            helper.make_node("ReduceSum", [f"{p}_xc", "sui_axes0"], [f"{p}_sum"], keepdims=0),
        ])
        outs += [f"{p}_mean", f"{p}_sum", f"{p}_gram"]
        g.output.extend([helper.make_tensor_value_info(f"{p}_mean", TensorProto.FLOAT, [1, t.width]),
                         helper.make_tensor_value_info(f"{p}_sum", TensorProto.FLOAT, [t.width]),
                         helper.make_tensor_value_info(f"{p}_gram", TensorProto.FLOAT, [t.width, t.width])])
    g.initializer.append(helper.make_tensor("sui_axes0", TensorProto.INT64, [1], [0]))
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 18:  # ReduceMean takes axes as an input from opset 18
        for node in g.node:
            if node.op_type == "ReduceMean" and node.output[0].startswith("sui_reduce_"):
                del node.attribute[:]
                node.attribute.extend([helper.make_attribute("keepdims", 1)])
                node.input.append("sui_axes0")
    sess, _ = create_session(m.SerializeToString(), "cpu")
    feed = FeedBuilder(sess.get_inputs())
    accs = [CovarianceAccumulator(t.width) for t in taps]
    for b in batches(ids, batch_size):
        res = sess.run(outs, feed(b))
        for i, acc in enumerate(accs):
            mean, s, gram = res[3 * i : 3 * i + 3]
            part = CovarianceAccumulator.from_state({"n": np.asarray(b.size), "shift": mean.reshape(-1).astype(np.float64),
                                                      "sum": s.astype(np.float64), "gram": gram.astype(np.float64)})
            acc.merge(part)
    for acc in accs:
        acc.finalize()


def sui_report(model: Path, ids_path: Path, batch_size: int) -> None:
    """(b) the real CLI, as a user runs it (its own child process; we wait on it)."""
    out = ids_path.with_suffix(".report.json")
    subprocess.run([sys.executable, "-m", "sui_onnx", "report", str(model), "--calib", str(ids_path),
                    "--batch-size", str(batch_size), "--device", "cpu", "-q", "--json", str(out)], check=True)


def main() -> None:
    mode, model, ids_path, batch_size = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    widths = json.loads(sys.argv[5]) if len(sys.argv) > 5 else []
    ids = np.load(ids_path)
    t0 = time.perf_counter()
    if mode == "a":
        plain_onnxruntime(model, ids, batch_size)
    elif mode == "g":
        numpy_gram(widths, ids, batch_size)
    elif mode == "c":
        torch_hooks(model, ids, batch_size)
    elif mode == "b":
        sui_report(model, ids_path, batch_size)
    elif mode == "b_graph":
        in_graph_reduction(model, ids, batch_size)
    wall = time.perf_counter() - t0
    peak = rss_mib()
    if mode == "b":  # the CLI ran as a child: its peak is the children's
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "tokens": int(ids.size), "wall_s": wall, "peak_rss_mib": peak}))


if __name__ == "__main__":
    main()
