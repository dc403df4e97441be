"""Which parts of slim's method help, measured on one model (docs/slim.md, "What helps").

    python bench/bench_slim_ablation.py models/work/gemma/onnx --name gemma3_270m

One calibration on Python documentation (--tokens, and 4x as many for the token-count row); at
3/4 and 1/2 of the width, dCE on held-out Python documentation and English prose for:
  - id, weighted by the down projection (the default), at ridge 0, 1e-4, 1e-3 (default), 1e-2, 1e-1;
  - id without the output weighting (plain pivoted Cholesky on the hidden covariance);
  - id with --schedule per-layer (same total width);
  - id with --refine (refitted on the narrowed model's own inputs);
  - id without token weighting (for models whose FFN output is normalized on its own);
  - id calibrated on 4x the tokens.
Writes bench/results/slim_ablation_<name>.json and prints a markdown table. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--eval-seq-len", type=int, default=256)
    ap.add_argument("--align", type=int, default=64)
    ap.add_argument("--skip-more-tokens", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="ridge 0, 1e-3, 1e-2, the per-layer schedule and 4x tokens only (refine, the variance baseline "
                         "and the unweighted statistics are bench/bench_slim_weighting.py's)")
    args = ap.parse_args()

    from models.domains import build
    from sui_onnx import slim as slim_math
    from sui_onnx.analyze import AnalysisOptions
    from sui_onnx.calib import CalibrationSpec
    from sui_onnx.evaluate import Evaluator, ModelInput
    from sui_onnx.graph.surgery import LayerEdit
    from sui_onnx.slimming import SlimStudy, aligned, eval_summary, refine

    code_calib, code_heldout = build(ROOT / "models" / "work")
    prose_heldout = ROOT / "sui_onnx" / "data" / "heldout.txt"

    def study_for(tokens: int, weighting: bool = True) -> SlimStudy:
        return SlimStudy(args.model, CalibrationSpec([code_calib], tokens=tokens), AnalysisOptions(device="cpu"),
                         weighting=weighting)

    study = study_for(args.tokens)
    ev = Evaluator([code_heldout, prose_heldout], study.src.folder, ModelInput(path=study.src.path), seq_len=args.eval_seq_len,
                   tokens=args.eval_tokens, device="cpu", kl=False)

    def measure(model) -> dict:
        r = ev.measure(ModelInput(data=model.SerializeToString(), external_folder=study.src.data_folder))
        return {s["path"].rsplit("/", 1)[-1]: s["delta_ce"] for s in eval_summary(r)["sources"]}

    def unweighted(st: SlimStudy, widths):
        edits = {}
        for i, k in enumerate(widths):
            sel = slim_math.select(st.cov[i], "id", None, kmax=k)
            r = slim_math.refit(st.cov[i], st.mean[i], st.weights[i], sel.keep(k), ridge=st.ridge)
            edits[i] = LayerEdit(r.keep, r.weight, r.bias_delta)
        return st.surgery.apply(edits)

    rows = []
    for num, den in ((3, 4), (1, 2)):
        uniform = [aligned(d, num / den, args.align) for d in study.widths]
        label = f"{num}/{den}"
        for ridge in ((0.0, 1e-3, 1e-2) if args.quick else (0.0, 1e-4, 1e-3, 1e-2, 1e-1)):
            study.ridge = ridge
            rows.append({"width": label, "variant": f"id, ridge {ridge:g}", "dce": measure(study.variant(uniform, "id").model)})
            print(rows[-1], flush=True)
        study.ridge = slim_math.DEFAULT_RIDGE
        if not args.quick:
            rows.append({"width": label, "variant": "id without output weighting", "dce": measure(unweighted(study, uniform))})
            print(rows[-1], flush=True)
        per_layer = study.per_layer_widths(uniform, "id", args.align)
        rows.append({"width": label, "variant": "id, --schedule per-layer", "widths": per_layer,
                     "dce": measure(study.variant(per_layer, "id").model)})
        print(rows[-1], flush=True)
        if args.quick:
            continue
        rows.append({"width": label, "variant": "id, --refine",
                     "dce": measure(refine(study, study.variant(uniform, "id"), CalibrationSpec([code_calib], tokens=args.tokens)).model)})
        print(rows[-1], flush=True)
        rows.append({"width": label, "variant": "variance (baseline)", "dce": measure(study.variant(uniform, "variance").model)})
        print(rows[-1], flush=True)
    if study.weighting and not args.quick:
        plain = study_for(args.tokens, weighting=False)
        for num, den in ((3, 4), (1, 2)):
            uniform = [aligned(d, num / den, args.align) for d in plain.widths]
            rows.append({"width": f"{num}/{den}", "variant": "id without token weighting",
                         "dce": measure(plain.variant(uniform, "id").model)})
            print(rows[-1], flush=True)
        del plain
    if not args.skip_more_tokens:
        big = study_for(4 * args.tokens)
        for num, den in ((3, 4), (1, 2)):
            uniform = [aligned(d, num / den, args.align) for d in big.widths]
            rows.append({"width": f"{num}/{den}", "variant": f"id, {4 * args.tokens:,} calibration tokens",
                         "dce": measure(big.variant(uniform, "id").model)})
            print(rows[-1], flush=True)
    out = {"model": str(args.model), "name": args.name, "tokens": args.tokens, "eval_tokens": args.eval_tokens,
           "calibration": str(code_calib), "rows": rows}
    path = HERE / "results" / f"slim_ablation_{args.name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    srcs = list(rows[0]["dce"])
    print("\n| width | variant | " + " | ".join(f"dCE {s}" for s in srcs) + " |\n|:--|:--|" + "---:|" * len(srcs))
    for r in rows:
        print(f"| {r['width']} | {r['variant']} | " + " | ".join(f"{r['dce'][s]:+.4f}" for s in srcs) + " |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
