"""A per-layer width schedule from measured sensitivity, against the uniform one (docs/slim.md).

    python bench/bench_slim_sensitivity.py models/work/gemma/onnx --name gemma3_270m

`--schedule per-layer` allocates widths by each layer's output-space residual, which on Gemma-3-270M
was much worse than the uniform schedule: the residual does not say which layers the model can
spare. This bench asks the model instead. On calibration text only (never the held-out text the
schedule is judged on), each FFN layer is narrowed on its own, the others kept whole, to each of
--fractions of its width, and the cost is measured as KL(original || narrowed) per token (KL rather
than dCE: always >= 0 and far less noisy on a few thousand tokens). Taking the costs as additive,
with linear interpolation between the measured widths (and none below the smallest fraction), the
widths at the same total as the uniform 3/4 schedule that minimise the summed cost are found exactly
(slim.allocate). The schedule and the uniform 3/4 model are then measured side by side on held-out
Python documentation and English prose. Writes bench/results/slim_sensitivity_<name>.json and prints
a markdown table. Nothing here is a test.
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


def cost_curve(width: int, points: dict[int, float]) -> np.ndarray:
    """cost[k] for k = 0..width: linear between the measured widths (0 at full width), inf below them."""
    ks = sorted(points) + [width]
    vs = [points[k] for k in sorted(points)] + [0.0]
    curve = np.full(width + 1, np.inf)
    grid = np.arange(ks[0], width + 1)
    curve[ks[0]:] = np.interp(grid, ks, vs)
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tokens", type=int, default=16384, help="calibration tokens (Python documentation)")
    ap.add_argument("--probe-tokens", type=int, default=2048, help="calibration-text tokens each single-layer probe is measured on")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--eval-seq-len", type=int, default=256)
    ap.add_argument("--fractions", nargs="+", default=["1/2", "3/4"])
    ap.add_argument("--target", default="3/4", help="the uniform schedule the measured one keeps the total of")
    ap.add_argument("--align", type=int, default=256, help="widths of the measured schedule are multiples of this")
    args = ap.parse_args()

    from models.domains import build
    from sui_onnx.analyze import AnalysisOptions
    from sui_onnx.calib import CalibrationSpec
    from sui_onnx.evaluate import Evaluator, ModelInput
    from sui_onnx.slim import allocate
    from sui_onnx.slimming import SlimStudy, aligned

    code_calib, code_heldout = build(ROOT / "models" / "work")
    prose_heldout = ROOT / "sui_onnx" / "data" / "heldout.txt"
    started = time.perf_counter()
    study = SlimStudy(args.model, CalibrationSpec([code_calib], tokens=args.tokens), AnalysisOptions(device="cpu"))
    study_s = time.perf_counter() - started
    full = study.widths
    reference = ModelInput(path=study.src.path, label="original")
    # the probes: calibration text, KL against the original (the reference is run with every probe)
    probe_ev = Evaluator([code_calib], study.src.folder, reference, seq_len=args.eval_seq_len,
                         tokens=args.probe_tokens, device="cpu", kl=True)
    fractions = [Fraction(f) for f in args.fractions]
    probes: list[dict] = []
    for layer, d in enumerate(full):
        for f in fractions:
            widths = list(full)
            widths[layer] = aligned(d, float(f), 64)
            t0 = time.perf_counter()
            v = study.variant(widths, "id")
            res = probe_ev.measure(ModelInput(data=v.model.SerializeToString(), external_folder=study.src.data_folder,
                                              label=f"layer {layer} at {f}"))
            s = res.pooled
            probes.append({"layer": layer, "fraction": str(f), "width": widths[layer], "kl": s.kl,
                           "delta_ce": s.delta_ce, "delta_ce_se": s.delta_ce_se, "top1": s.top1,
                           "seconds": round(time.perf_counter() - t0, 1)})
            print(f"layer {layer:2d} at {str(f):>4s}: KL {s.kl:.4f}  dCE {s.delta_ce:+.4f} ± {s.delta_ce_se:.4f}  "
                  f"({probes[-1]['seconds']} s)", flush=True)
    curves = []
    for layer, d in enumerate(full):
        pts = {p["width"]: float(p["kl"]) for p in probes if p["layer"] == layer}
        curves.append(cost_curve(d, pts))
    target = Fraction(args.target)
    uniform = [aligned(d, float(target), 64) for d in full]
    measured = allocate(curves, full, sum(uniform), align=args.align)
    predicted = {"uniform": float(sum(c[k] for c, k in zip(curves, uniform))),
                 "measured": float(sum(c[k] for c, k in zip(curves, measured)))}
    print(f"schedule at the total of uniform {target}: {measured} (predicted summed KL {predicted['measured']:.4f} "
          f"against {predicted['uniform']:.4f} for uniform)", flush=True)

    ev = Evaluator([code_heldout, prose_heldout], study.src.folder, reference, seq_len=args.eval_seq_len,
                   tokens=args.eval_tokens, device="cpu", kl=True)
    rows = []
    for name, widths in (("uniform", uniform), ("measured per-layer", measured)):
        v = study.variant(widths, "id")
        res = ev.measure(ModelInput(data=v.model.SerializeToString(), external_folder=study.src.data_folder, label=name))
        by = {Path(s.source["path"]).name: s for s in res.sources}
        docs, prose = by[code_heldout.name], by[prose_heldout.name]
        rows.append({"schedule": name, "widths": widths, "total": int(sum(widths)),
                     "docs": {"delta_ce": docs.delta_ce, "delta_ce_se": docs.delta_ce_se, "kl": docs.kl, "top1": docs.top1},
                     "prose": {"delta_ce": prose.delta_ce, "delta_ce_se": prose.delta_ce_se, "kl": prose.kl, "top1": prose.top1}})
        print(f"{name}: docs dCE {docs.delta_ce:+.4f} ± {docs.delta_ce_se:.4f} KL {docs.kl:.4f}; prose dCE "
              f"{prose.delta_ce:+.4f} KL {prose.kl:.4f}", flush=True)
    out = {"model": str(args.model), "name": args.name, "tokens": args.tokens, "probe_tokens": args.probe_tokens,
           "eval_tokens": args.eval_tokens, "eval_seq_len": args.eval_seq_len, "fractions": args.fractions,
           "target": args.target, "align": args.align, "study_s": round(study_s, 1),
           "wall_s": round(time.perf_counter() - started, 1), "probes": probes,
           "summed_single_layer_kl": predicted, "rows": rows}
    path = HERE / "results" / f"slim_sensitivity_{args.name}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print("\n| schedule | widths | dCE docs ± se | KL docs | top-1 docs | dCE prose | KL prose |")
    print("|:--|:--|---:|---:|---:|---:|---:|")
    for r in rows:
        w = r["widths"]
        span = str(w[0]) if min(w) == max(w) else f"{min(w)}..{max(w)}"
        print(f"| {r['schedule']} | {span} | {r['docs']['delta_ce']:+.3f} ± {r['docs']['delta_ce_se']:.3f} | "
              f"{r['docs']['kl']:.3f} | {100 * r['docs']['top1']:.1f}% | {r['prose']['delta_ce']:+.3f} | {r['prose']['kl']:.3f} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
