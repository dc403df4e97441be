"""GPU benchmark: end-to-end tokens/s of `sui-onnx report --device cuda` on a GPT-2-small geometry
(d_model 768, 12 layers, d_ff 3072, random init), plain onnxruntime-gpu inference side by side, peak
device memory, and the metrics' agreement with the CPU float64 result on a common token subset.

    python bench/bench_gpu.py --tokens 262144 --json OUT.json

Needs the `gpu` extra (onnxruntime-gpu, cupy-cuda13x) and, to build the model, the `export` extra.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_runner import WORK, build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=262_144)
    ap.add_argument("--check-tokens", type=int, default=16_384, help="tokens for the CPU float64 comparison")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import cupy as cp

    from sui_onnx.analyze import AnalysisOptions, analyze
    from sui_onnx.calib import CalibrationSpec
    from sui_onnx.runner import FeedBuilder, create_session

    _, model = build_model(768, 12, 3072, 50257)
    ids = np.random.default_rng(0).integers(0, 50257, (args.tokens // args.seq_len, args.seq_len))
    ids_path = WORK / f"gpu_ids_{args.tokens}.npy"
    np.save(ids_path, ids)

    sess, choice = create_session(model, "cuda")
    feed = FeedBuilder(sess.get_inputs())
    sess.run(None, feed(ids[: args.batch_size]))  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(ids), args.batch_size):
        sess.run(None, feed(ids[i : i + args.batch_size]))
    plain = time.perf_counter() - t0

    pool = cp.get_default_memory_pool()
    spec = CalibrationSpec([ids_path], batch_size=args.batch_size)
    analyze(model, CalibrationSpec([ids_path], batch_size=args.batch_size, tokens=args.batch_size * args.seq_len),
            AnalysisOptions(device="cuda"))  # warm-up: CUDA context, cuBLAS, cuSOLVER
    t0 = time.perf_counter()
    rep = analyze(model, spec, AnalysisOptions(device="cuda"))
    ours = time.perf_counter() - t0
    peak_dev = pool.total_bytes() / 2**20

    n = args.check_tokens // args.seq_len
    np.save(WORK / "gpu_check_ids.npy", ids[:n])
    chk = CalibrationSpec([WORK / "gpu_check_ids.npy"], batch_size=args.batch_size)
    gpu_small = analyze(model, chk, AnalysisOptions(device="cuda"))
    cpu_small = analyze(model, chk, AnalysisOptions(device="cpu", precision="fp64"))
    worst = 0.0
    for a, b in zip(gpu_small.layers, cpu_small.layers):
        for key in ("hard_rank", "soft_rank", "concentration", "sui"):
            worst = max(worst, abs(getattr(a, key) - getattr(b, key)) / abs(getattr(b, key)))
    out = {
        "providers": list(choice.providers),
        "tokens": int(ids.size),
        "plain_onnxruntime_s": plain,
        "plain_tokens_per_s": ids.size / plain,
        "sui_onnx_s": ours,
        "sui_onnx_tokens_per_s": ids.size / ours,
        "ratio_sui_over_plain": ours / plain,
        "cupy_pool_peak_mib": peak_dev,
        "max_rel_metric_diff_vs_cpu_fp64": worst,
        "median_sui": rep.summary["sui"]["median"],
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
