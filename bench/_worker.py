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
    stats = {}

    def hook(idx):
        def fn(module, inputs):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            n, s, g = stats.get(idx, (0, 0.0, 0.0))
            stats[idx] = (n + x.shape[0], s + x.sum(0), g + x.T @ x)
        return fn

    for i, block in enumerate(model.transformer.h):
        block.mlp.c_proj.register_forward_pre_hook(hook(i))
    with torch.inference_mode():
        for b in batches(ids, batch_size):
            model(torch.from_numpy(b))
        for n, s, g in stats.values():
            cov = (g - torch.outer(s, s) / n) / (n - 1)
            torch.linalg.eigvalsh(cov)


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
    wall = time.perf_counter() - t0
    peak = rss_mib()
    if mode == "b":  # the CLI ran as a child: its peak is the children's
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "tokens": int(ids.size), "wall_s": wall, "peak_rss_mib": peak}))


if __name__ == "__main__":
    main()
