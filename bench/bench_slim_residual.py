"""Token weighting by the residual stream's norm, for pre-norm models (docs/slim.md).

    python bench/bench_slim_residual.py models/work/smollm2/onnx --name smollm2_135m

In a pre-norm decoder (LLaMA, SmolLM2, GPT-2) an FFN's output is added to the residual stream r,
and every later block sees it through a norm: what the model feels of an FFN output error e at a
token is about e / rms(r), not e. Tokens whose residual stream is large (attention sinks, the
"massive activations" of the first token and of delimiters) dominate the plain covariance, and
so the selection and the refit, while the norm makes their errors small. The hypothesis: weight
each token by 1 / mean(r^2) (r the residual stream after the FFN's Add; capped at 1000x the
median, as slim.norm_weights does for FFN outputs normalized on their own) in both the selection
and the refit.

One calibration on Python documentation; per width, the same bench variants as the tables:
`id` (plain statistics, the default), `id residual-weighted`, and `variance` (plain), measured
against the original on held-out Python documentation and English prose. Also records how
uneven the residual norms are: per layer, the ratio of the 99th to the 50th percentile of
rms(r) over the calibration tokens (a batch mean). Writes bench/results/slim_residual_<name>.json.
Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))


def residual_adds(study) -> list[tuple[str, str]]:
    """Per FFN layer, the residual Add the FFN output joins: the first Add (through Cast/Reshape
    and the down bias) whose other input is not a constant. (stream before, stream after)."""
    ix = study.surgery.ix
    pairs = []
    for plan in study.surgery.plans:
        t = ix.canon(ix.nodes[plan.down_node].output[0])
        found = None
        for _ in range(6):
            cons = ix.consumer_nodes(t)
            if len(cons) != 1:
                break
            node = ix.nodes[cons[0]]
            if node.op_type in ("Cast", "Reshape"):
                t = ix.canon(node.output[0])
                continue
            if node.op_type == "Add":
                other = [x for x in node.input if ix.canon(x) != t]
                if other and not ix.is_static(ix.canon(other[0])):
                    found = (other[0], node.output[0])
                    break
                t = ix.canon(node.output[0])  # the down bias
                continue
            break
        if found is None:
            raise SystemExit(f"layer {plan.layer}: no residual Add after the FFN output")
        pairs.append(found)
    return pairs


def residual_tensors(study) -> list[str]:
    """Per FFN layer, the residual stream after the FFN output joins it (residual_adds)."""
    return [after for _, after in residual_adds(study)]


def residual_weighted(study, calib, cap: float = 1e3):
    """Per layer: (covariance, mean) of the FFN hidden activations with each token weighted by
    1 / mean(r^2), and the p99/p50 ratio of rms(r); one calibration pass."""
    from dataclasses import replace

    import numpy as np

    from sui_onnx.calib import CalibrationStream
    from sui_onnx.graph import find_taps, tapped_model
    from sui_onnx.runner import TapRunner
    from sui_onnx.slim import WeightedMoments

    taps = find_taps(study.src.model, site="post")
    res = residual_tensors(study)
    extra = [replace(t, tensor=name, width=p.out_width) for t, name, p in zip(taps, res, study.surgery.plans)]
    runner = TapRunner(tapped_model(study.src, list(taps) + extra).SerializeToString(),
                       [t.tensor for t in taps] + res, "cpu", external_folder=study.src.data_folder)
    widths = study.widths
    outw = [p.out_width for p in study.surgery.plans]
    moments = [WeightedMoments(d) for d in widths]
    ratios = [[] for _ in widths]
    stream = CalibrationStream(calib, study.src.folder, widths)
    for batch in stream:
        outs = runner.run(batch.input_ids, widths + outw)
        for i, d in enumerate(widths):
            h = np.asarray(outs[i], dtype=np.float32).reshape(-1, d)
            r = np.asarray(outs[len(widths) + i], dtype=np.float64).reshape(-1, outw[i])
            ms = (r * r).mean(axis=1)
            w = 1.0 / np.maximum(ms, 1e-12)
            w = np.minimum(w, cap * float(np.median(w)))
            moments[i].update(h, w.astype(np.float32))
            rms = np.sqrt(ms)
            ratios[i].append(float(np.percentile(rms, 99) / np.percentile(rms, 50)))
    return [(m.covariance(), m.mean()) for m in moments], [float(np.mean(x)) for x in ratios]


def main() -> None:
    from _slim_common import add_study_args, evaluator, measure_row, plain_study, ratio_widths, texts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_args(ap, sources=False)
    args = ap.parse_args()

    code, evals = texts()
    spec, study, plain_s = plain_study(args, code)
    plain = {i: (study.cov[i], study.mean[i]) for i in range(len(study.widths))}
    t0 = time.perf_counter()
    weighted, spread = residual_weighted(study, spec)
    print("rms(r) p99/p50 per layer:", " ".join(f"{x:.1f}" for x in spread), flush=True)
    study_s = plain_s + time.perf_counter() - t0  # both calibration passes, as before
    ev = evaluator(study, evals, args)

    def use(stats):
        for i, (c, m) in (stats.items() if isinstance(stats, dict) else enumerate(stats)):
            study.cov[i], study.mean[i] = c, m
        study._selections.clear()

    rows = []
    for r in args.ratios:
        widths = ratio_widths(study, r)
        use(plain)
        variants = [("id", study.variant(widths, "id")), ("variance", study.variant(widths, "variance"))]
        use(weighted)
        variants.append(("id residual-weighted", study.variant(widths, "id")))
        for name, v in variants:
            rows.append(measure_row(ev, study, r, name, v))
    path = HERE / "results" / f"slim_residual_{args.name}.json"
    path.write_text(json.dumps({"model": str(args.model), "tokens": args.tokens, "eval_tokens": args.eval_tokens,
                                "eval_seq_len": args.eval_seq_len, "study_s": study_s,
                                "rms_p99_over_p50": spread, "rows": rows}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
