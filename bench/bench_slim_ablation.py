"""Which parts of slim's method help, measured on one model (docs/slim.md, "What helps").

    python bench/bench_slim_ablation.py models/work/gemma/onnx --name gemma3_270m

One calibration on Python documentation (--tokens), and one on 4x as many tokens; at 3/4 and 1/2 of
the width, dCE on held-out Python documentation and English prose for the `id` method:
  - the default (token weighting where the FFN output is normalized on its own, ridge 1e-3, uniform
    widths);
  - without the output weighting of the selection (plain pivoted Cholesky on the hidden covariance;
    the refit is the same);
  - ridge 1e-2;
  - --schedule per-layer (the same total width);
  - calibrated on 4x the tokens.
Token weighting, --refine and the variance baseline, with KL and top-1, are
bench/bench_slim_weighting.py's. Writes bench/results/slim_ablation_<name>.json and prints a
markdown table. Nothing here is a test.
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
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--eval-seq-len", type=int, default=256)
    ap.add_argument("--align", type=int, default=64)
    ap.add_argument("--skip-more-tokens", action="store_true")
    args = ap.parse_args()

    from models.domains import build
    from sui_onnx.analyze import AnalysisOptions
    from sui_onnx.calib import CalibrationSpec
    from sui_onnx.evaluate import Evaluator, ModelInput
    from sui_onnx.slim import DEFAULT_RIDGE
    from sui_onnx.slimming import SlimStudy, aligned, eval_summary

    code_calib, code_heldout = build(ROOT / "models" / "work")
    prose_heldout = ROOT / "sui_onnx" / "data" / "heldout.txt"

    def study_for(tokens: int) -> SlimStudy:
        return SlimStudy(args.model, CalibrationSpec([code_calib], tokens=tokens), AnalysisOptions(device="cpu"))

    study = study_for(args.tokens)
    ev = Evaluator([code_heldout, prose_heldout], study.src.folder, ModelInput(path=study.src.path), seq_len=args.eval_seq_len,
                   tokens=args.eval_tokens, device="cpu", kl=False)
    rows = []

    def measure(width: str, variant: str, st: SlimStudy, widths) -> None:
        v = st.variant(widths, "id")
        r = ev.measure(ModelInput(data=v.model.SerializeToString(), external_folder=st.src.data_folder))
        rows.append({"width": width, "variant": variant, "widths": list(widths),
                     "dce": {s["path"].rsplit("/", 1)[-1]: s["delta_ce"] for s in eval_summary(r)["sources"]},
                     "se": {s["path"].rsplit("/", 1)[-1]: s["delta_ce_se"] for s in eval_summary(r)["sources"]}})
        print(rows[-1]["width"], rows[-1]["variant"], rows[-1]["dce"], flush=True)

    ladder = {f"{n}/{d}": [aligned(w, n / d, args.align) for w in study.widths] for n, d in ((3, 4), (1, 2))}
    for label, widths in ladder.items():
        measure(label, "default", study, widths)
    study.output_weighted = False  # plain pivoted Cholesky: the hidden-space criterion
    study._selections.clear()
    for label, widths in ladder.items():
        measure(label, "without the output weighting of the selection", study, widths)
    study.output_weighted = True
    study._selections.clear()
    for ridge in (1e-2,):
        study.ridge = ridge
        for label, widths in ladder.items():
            measure(label, f"ridge {ridge:g}", study, widths)
    study.ridge = DEFAULT_RIDGE
    for label, widths in ladder.items():
        measure(label, "--schedule per-layer", study, study.per_layer_widths(widths, "id", args.align))
    if not args.skip_more_tokens:
        del study
        big = study_for(4 * args.tokens)
        for label, widths in ladder.items():
            measure(label, f"{4 * args.tokens:,} calibration tokens", big, widths)
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
