"""Side-by-side benchmark of sui-onnx against the floor of an exact analysis and a PyTorch baseline.

    python bench/bench_runner.py                  # GPT-2 d_model 256, 4 layers, d_ff 1024
    python bench/bench_runner.py --tokens 16384 65536 262144 --torch-at 65536

Modes, each in its own process over the same token ids and batches:
  (a) plain onnxruntime inference of the untapped model;
  (b) `sui-onnx report MODEL --calib ids.npy` (the real CLI);
  (g) one plain NumPy float32 X^T X per layer per batch (tokens x d_ff): a + g is the physical floor;
  (c) a PyTorch forward-hook baseline (HF model, hooks on the down-projection input, float64
      covariance, torch.linalg.eigvalsh), the way the paper's authors measure.
Prints wall time, tokens/s, peak RSS and the ratios b/a, b/(a+g), b/c, and RSS(largest)/RSS(smallest).
Needs the `export` extra (torch, transformers, optimum) to build the model. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work"


def build_model(d_model: int, n_layers: int, d_ff: int, vocab: int, family: str = "gpt2") -> tuple[Path, Path]:
    """A seeded random-init model of `family` saved as an HF folder and exported with optimum (cached)."""
    name = f"{family}_d{d_model}_l{n_layers}_f{d_ff}_v{vocab}"
    hf_dir, onnx_dir = WORK / name / "hf", WORK / name / "onnx"
    if (onnx_dir / "model.onnx").is_file() and (hf_dir / "config.json").is_file():
        return hf_dir, onnx_dir / "model.onnx"
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from models.export import export_optimum
    from models.families import build_model as build

    torch.manual_seed(0)
    model = build(family, d_model=d_model, n_layers=n_layers, d_ff=d_ff, vocab=vocab, n_heads=max(1, d_model // 64))
    model.eval()
    hf_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(hf_dir)
    export_optimum(model, family, onnx_dir / "model.onnx")
    return hf_dir, onnx_dir / "model.onnx"


REPEAT = 3


def measure(mode: str, target: Path, ids_path: Path, batch_size: int, widths: list[int]) -> dict:
    """Best of REPEAT runs (wall time; peak RSS of that run): the least disturbed measurement."""
    cmd = [sys.executable, str(HERE / "_worker.py"), mode, str(target), str(ids_path), str(batch_size), json.dumps(widths)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    runs = []
    for _ in range(REPEAT):
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["wall_s"])
    best["runs_s"] = [round(r["wall_s"], 3) for r in runs]
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("gpt2", "llama"), default="gpt2")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tokens", type=int, nargs="+", default=[16384, 65536, 262144])
    ap.add_argument("--torch-at", type=int, nargs="*", default=[65536], help="token counts at which to run (c)")
    ap.add_argument("--graph-reduction-at", type=int, nargs="*", default=[65536],
                    help="token counts at which to measure the in-graph reduction alternative (b_graph)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best wall time counts")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global REPEAT
    REPEAT = max(1, args.repeat)

    if args.build_only:
        build_model(args.d_model, args.layers, args.d_ff, args.vocab, args.family)
        return
    # build in a child: importing torch here would raise this process's peak RSS, which the measured
    # children inherit through fork (ru_maxrss survives exec)
    subprocess.run([sys.executable, __file__, "--build-only", "--family", args.family, "--d-model", str(args.d_model),
                    "--layers", str(args.layers), "--d-ff", str(args.d_ff), "--vocab", str(args.vocab)], check=True)
    hf_dir, model = build_model(args.d_model, args.layers, args.d_ff, args.vocab, args.family)
    widths = [args.d_ff] * args.layers
    rows = []
    for n in args.tokens:
        ids = np.random.default_rng(n).integers(0, args.vocab, (n // args.seq_len, args.seq_len))
        ids_path = WORK / f"ids_{n}.npy"
        np.save(ids_path, ids)
        row = {"tokens": int(ids.size)}
        for mode, target in (("a", model), ("b", model), ("g", model)):
            row[mode] = measure(mode, target, ids_path, args.batch_size, widths)
        if n in args.graph_reduction_at:
            row["b_graph"] = measure("b_graph", model, ids_path, args.batch_size, widths)
        if n in args.torch_at:
            row["c"] = measure("c", hf_dir, ids_path, args.batch_size, widths)
        rows.append(row)
        print_row(row)
    summary = summarize(rows)
    print_table(rows, summary, args)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary, "machine": machine()}, indent=2) + "\n")


def print_row(row: dict) -> None:
    parts = [f"{m}={row[m]['wall_s']:.2f}s" for m in ("a", "b", "g", "b_graph", "c") if m in row]
    print(f"# {row['tokens']:>7} tokens: " + " ".join(parts), file=sys.stderr, flush=True)


def summarize(rows: list[dict]) -> dict:
    s = {"b_over_a": {}, "b_over_a_plus_g": {}, "b_over_c": {}}
    for r in rows:
        t = r["tokens"]
        s["b_over_a"][t] = r["b"]["wall_s"] / r["a"]["wall_s"]
        s["b_over_a_plus_g"][t] = r["b"]["wall_s"] / (r["a"]["wall_s"] + r["g"]["wall_s"])
        if "c" in r:
            s["b_over_c"][t] = r["b"]["wall_s"] / r["c"]["wall_s"]
    s["rss_growth_b"] = rows[-1]["b"]["peak_rss_mib"] / rows[0]["b"]["peak_rss_mib"]
    return s


def machine() -> dict:
    import numpy
    import onnxruntime

    return {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__}


def print_table(rows: list[dict], s: dict, args) -> None:
    print(f"\n{args.family} d_model {args.d_model}, {args.layers} layers, d_ff {args.d_ff}, seq {args.seq_len}, "
          f"batch {args.batch_size}; best of {REPEAT} runs; {machine()}")
    print(f"{'tokens':>8} {'mode':<26} {'wall s':>8} {'tok/s':>9} {'peak RSS MiB':>13}")
    names = {"a": "(a) plain onnxruntime", "b": "(b) sui-onnx report", "g": "(g) numpy X^T X floor",
             "b_graph": "(b') in-graph reduction", "c": "(c) PyTorch hooks"}
    for r in rows:
        for m in ("a", "b", "g", "b_graph", "c"):
            if m in r:
                x = r[m]
                print(f"{r['tokens']:>8} {names[m]:<26} {x['wall_s']:>8.2f} {x['tokens'] / x['wall_s']:>9,.0f} {x['peak_rss_mib']:>13.0f}")
    print()
    for t in s["b_over_a"]:
        extra = f"  b/c {s['b_over_c'][t]:.2f}" if t in s["b_over_c"] else ""
        print(f"{t:>8} tokens: b/a {s['b_over_a'][t]:.2f}  b/(a+g) {s['b_over_a_plus_g'][t]:.2f}{extra}")
    print(f"peak RSS of (b), largest / smallest token count: {s['rss_growth_b']:.3f}")


if __name__ == "__main__":
    main()
