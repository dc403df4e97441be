"""Token weighting, --refine and the variance baseline on one model, with KL and top-1 (docs/slim.md).

    python bench/bench_slim_weighting.py models/work/gemma/onnx --name gemma3_270m

One calibration on Python documentation with token-weighted statistics (the default for FFN outputs
normalized on their own) and one without; at 3/4 and 1/2 of the width: id, id --refine (weighted
run only) and the variance baseline; each measured against the original on held-out Python
documentation and English prose: dCE ± its paired standard error, KL(original || narrow), top-1.
Writes bench/results/slim_weighting_<name>.json. Nothing here is a test.
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
    args = ap.parse_args()

    from models.domains import build
    from sui_onnx.analyze import AnalysisOptions
    from sui_onnx.calib import CalibrationSpec
    from sui_onnx.evaluate import Evaluator, ModelInput
    from sui_onnx.slimming import SlimStudy, aligned, refine

    code, code_heldout = build(ROOT / "models" / "work")
    evals = [code_heldout, ROOT / "sui_onnx" / "data" / "heldout.txt"]
    spec = CalibrationSpec([code], tokens=args.tokens)
    rows, ev = [], None
    for weighting in (True, False):
        study = SlimStudy(args.model, spec, AnalysisOptions(device="cpu"), weighting=weighting)
        if ev is None:
            ev = Evaluator(evals, study.src.folder, ModelInput(path=study.src.path), seq_len=256, tokens=args.eval_tokens,
                           device="cpu", kl=True)
        for num, den in ((3, 4), (1, 2)):
            widths = [aligned(d, num / den, 64) for d in study.widths]
            variants = [("id", study.variant(widths, "id"))]
            if weighting:
                variants += [("id --refine", refine(study, variants[0][1], spec)), ("variance", study.variant(widths, "variance"))]
            for name, v in variants:
                r = ev.measure(ModelInput(data=v.model.SerializeToString(), external_folder=study.src.data_folder))
                rows.append({"width": f"{num}/{den}", "weighted": bool(study.weighting), "variant": name,
                             "sources": {s.source["path"].rsplit("/", 1)[-1]: {"dce": s.delta_ce, "se": s.delta_ce_se,
                                                                               "kl": s.kl, "top1": s.top1} for s in r.sources}})
                print(rows[-1], flush=True)
    path = HERE / "results" / f"slim_weighting_{args.name}.json"
    path.write_text(json.dumps({"model": str(args.model), "tokens": args.tokens, "eval_tokens": args.eval_tokens,
                                "rows": rows}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
