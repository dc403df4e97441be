"""Is the greedy selection what limits `id`? Backward elimination against it (docs/slim.md).

    python bench/bench_slim_selection.py models/work/gemma/onnx --name gemma3_270m

`id` keeps neurons by a forward greedy (pivoted Cholesky weighted by the down projection): each
step adds the neuron that most lowers the output-space error of the least-squares refit. This
runs the other classic greedy on the same statistics: start from all D neurons and remove, one at
a time, the neuron whose removal raises that error least (||beta_j||^2 / P_jj with P the inverse
covariance of the neurons left and beta the refit, both updated exactly by rank one: the
optimal-brain-surgeon step for a whole neuron). Per layer and width it records the exact
output-space error tr(W^T C W) - tr(W^T C_:S C_SS^-1 C_S: W) of both subsets and their overlap.
One calibration on Python documentation (token-weighted where the FFN output is normalized on its
own), as bench_slim.py. Writes bench/results/slim_selection_<name>.json. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def output_error(cov: np.ndarray, weight: np.ndarray, keep: np.ndarray) -> float:
    """tr(W^T C W) - tr(W^T C_:S C_SS^-1 C_S: W): the refit's output-space error with S kept."""
    cw = cov @ weight
    css = cov[np.ix_(keep, keep)]
    beta = np.linalg.lstsq(css, cw[keep], rcond=1e-12)[0]
    return float(np.einsum("ij,ij->", weight, cw) - np.einsum("ij,ij->", cw[keep], beta))


def backward_elimination(cov: np.ndarray, weight: np.ndarray, k: int, ridge: float = 1e-9) -> np.ndarray:
    """The k neurons left after removing D - k, cheapest first (see module doc)."""
    d = cov.shape[0]
    p = np.linalg.inv(cov + ridge * np.trace(cov) / d * np.eye(d))
    beta = p @ (cov @ weight)
    alive = np.arange(d)
    for _ in range(d - k):
        j = int(np.argmin(np.einsum("ij,ij->i", beta, beta) / np.diag(p)))
        pj, bj = p[:, j].copy(), beta[j].copy()
        beta -= np.outer(pj / pj[j], bj)
        p -= np.outer(pj, pj) / pj[j]
        rest = np.arange(len(alive)) != j
        p, beta, alive = p[np.ix_(rest, rest)], beta[rest], alive[rest]
    return np.sort(alive)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--ratios", nargs="+", default=["3/4", "1/2"])
    ap.add_argument("--calib", type=Path, default=None, help="calibration text (default: models.domains' Python docs)")
    args = ap.parse_args()

    from sui_onnx.analyze import AnalysisOptions
    from sui_onnx.calib import CalibrationSpec
    from sui_onnx.slimming import SlimStudy, aligned

    if args.calib is None:
        from models.domains import build

        calib, _ = build(ROOT / "models" / "work")
    else:
        calib = args.calib
    study = SlimStudy(args.model, CalibrationSpec([calib], tokens=args.tokens), AnalysisOptions(device="cpu"))
    rows = []
    for r in args.ratios:
        ratio = float(Fraction(r))
        for i, d in enumerate(study.widths):
            k = aligned(d, ratio, 64)
            cov, weight = study.cov[i], np.asarray(study.weights[i], dtype=np.float64)
            forward = study.selection(i, "id", k).keep(k)
            t0 = time.perf_counter()
            backward = backward_elimination(cov, weight, k)
            secs = time.perf_counter() - t0
            ef, eb = output_error(cov, weight, forward), output_error(cov, weight, backward)
            rows.append({"width": r, "layer": i, "k": k, "forward_error": ef, "backward_error": eb,
                         "ratio": eb / ef if ef > 0 else None, "overlap": len(np.intersect1d(forward, backward)) / k,
                         "backward_s": secs})
            print(json.dumps(rows[-1]), flush=True)
    path = HERE / "results" / f"slim_selection_{args.name}.json"
    path.write_text(json.dumps({"model": str(args.model), "tokens": args.tokens, "rows": rows}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
