"""How much of a narrowed FFN's error a linear bypass from its input could take back (docs/slim.md).

    python bench/bench_slim_bypass.py models/work/smollm2/onnx --name smollm2_135m

`id` predicts the dropped neurons linearly from the kept ones. The dropped neurons are functions of
the FFN's input x (d_model wide), and part of each is linear in x (GELU's z/2; a gated unit's
mean gate times its up projection), which no combination of kept neurons has to reproduce. A
linear bypass y' = h_S W' + x A + c (one d_model x m matrix A beside the narrowed FFN) would take
that part back. Before building it, this bench asks the statistics whether it is worth its
parameters: in one calibration pass it gathers, per FFN layer, the joint covariance of the hidden
activation h (D) and the FFN input x (d), and compares the exact output-space errors

    E(S) = tr(W^T (C_hh - C_hZ C_ZZ^-1 C_Zh) W),     Z = h_S (no bypass) or Z = (h_S, x) (bypass)

with S chosen by `id`'s greedy (on C_hh, or on C_h|x = C_hh - C_hx C_xx^-1 C_xh with the bypass),
at each width, and at the width that spends the bypass's d x m parameters on more neurons instead
(d m / (parameters per neuron)). A bypass is worth building only where it beats that. Errors are
shares of tr(W^T C_hh W) (the error at width 0). Writes bench/results/slim_bypass_<name>.json.
Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))


def conditional(c_hh: np.ndarray, c_hx: np.ndarray, c_xx: np.ndarray, ridge: float) -> np.ndarray:
    """C_h|x = C_hh - C_hx C_xx^-1 C_xh (ridge relative to x's mean variance)."""
    from sui_onnx.slim import solve_psd

    a = c_xx.copy()
    a[np.diag_indices_from(a)] += ridge * float(np.trace(a)) / a.shape[0]
    out = c_hh - c_hx @ solve_psd(a, c_hx.T)
    return (out + out.T) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--ratios", nargs="+", default=["1/4", "1/2", "3/4"])
    ap.add_argument("--calib", type=Path, default=None, help="calibration text (default: models.domains' Python docs)")
    args = ap.parse_args()

    from sui_onnx.calib import CalibrationSpec, CalibrationStream
    from sui_onnx.graph import find_taps, load_model, tapped_model
    from sui_onnx.graph.surgery import FFNSurgery
    from sui_onnx.runner import TapRunner
    from sui_onnx.slim import DEFAULT_RIDGE, WeightedMoments, select

    from _slim_common import texts

    calib, _ = texts(args.calib, None)
    spec = CalibrationSpec([calib], tokens=args.tokens)
    t0 = time.perf_counter()
    src = load_model(args.model, lean=True)
    surgery = FFNSurgery(src)
    taps = find_taps(src.model, site="post")
    xs = [b.ups[0].data for b in surgery.blocks]
    d_model = [b.ups[0].k for b in surgery.blocks]
    widths = [t.width for t in taps]
    gated = [len(b.ups) == 2 or b.ups[0].n == 2 * t.width for b, t in zip(surgery.blocks, taps)]
    all_taps = list(taps) + [replace(t, tensor=x, width=d) for t, x, d in zip(taps, xs, d_model)]
    runner = TapRunner(tapped_model(src, all_taps).SerializeToString(), [t.tensor for t in all_taps], "cpu",
                       external_folder=src.data_folder)
    joint = [WeightedMoments(w + d) for w, d in zip(widths, d_model)]
    run_w = widths + d_model
    n = len(widths)
    for batch in CalibrationStream(spec, src.folder, widths):
        outs = runner.run(batch.input_ids, run_w)
        for i in range(n):
            h = np.asarray(outs[i], dtype=np.float32).reshape(-1, widths[i])
            x = np.asarray(outs[n + i], dtype=np.float32).reshape(-1, d_model[i])
            joint[i].update(np.concatenate([h, x], axis=1), np.ones(h.shape[0], np.float32))
    pass_s = time.perf_counter() - t0
    print(f"calibration pass: {pass_s:.1f} s", flush=True)
    del runner
    rows = []
    for i in range(n):
        c = joint[i].covariance()
        D, d = widths[i], d_model[i]
        c_hh, c_hx, c_xx = c[:D, :D], c[:D, D:], c[D:, D:]
        w = surgery.down_weight(i).astype(np.float64)
        m = w.shape[1]
        per_neuron = (3 if gated[i] else 2) * d  # up (+ gate) column and down row
        extra = int(round(d * m / per_neuron))
        plain = select(c_hh, "id", w).residual
        bypass = select(conditional(c_hh, c_hx, c_xx, DEFAULT_RIDGE), "id", w).residual
        total = float(plain[0])
        row = {"layer": i, "width": D, "d_model": d, "gated": gated[i], "bypass_as_neurons": extra,
               "x_only": float(bypass[0]) / total, "ratios": {}}
        for r in args.ratios:
            k = int(round(D * float(Fraction(r))))
            row["ratios"][r] = {"k": k, "plain": float(plain[k]) / total, "bypass": float(bypass[k]) / total,
                                "plain_same_params": float(plain[min(D, k + extra)]) / total}
        rows.append(row)
        line = "  ".join(f"{r}: {v['plain']:.4f} -> bypass {v['bypass']:.4f} (same params {v['plain_same_params']:.4f})"
                         for r, v in row["ratios"].items())
        print(f"layer {i:2d}: x alone {row['x_only']:.3f}  {line}", flush=True)
    summary = {}
    for r in args.ratios:
        summary[r] = {key: float(np.mean([row["ratios"][r][key] for row in rows]))
                      for key in ("plain", "bypass", "plain_same_params")}
        print(f"mean over layers at {r}: {summary[r]}")
    out = {"model": str(args.model), "name": args.name, "tokens": args.tokens, "pass_s": round(pass_s, 1),
           "ridge": DEFAULT_RIDGE, "rows": rows, "mean_over_layers": summary}
    path = HERE / "results" / f"slim_bypass_{args.name}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
