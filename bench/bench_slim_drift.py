"""A sequential refit that corrects the drift of the residual stream (docs/slim.md).

    python bench/bench_slim_drift.py models/work/smollm2/onnx --name smollm2_135m

For pre-norm decoders whose FFN output is added to the residual stream as it is (LLaMA,
SmolLM2, GPT-2; not Gemma's post-FFN norm): r_after = r_before + y. The plain refit fits each
narrowed FFN to the original FFN output y, both on the original model's inputs; the sequential
refit (slimming.refine(sequential=True), measured worse on Gemma) fits the narrowed FFN, fed
by the narrowed model, to the original's y fed by the original: it absorbs the drift of its
own input, not the drift the residual stream already carries. This one asks the FFN to undo
that too (a block-output target, as asymmetric calibration does for quantization): layer L,
first to last, on the model whose layers before L are already refitted, is fitted by least
squares to

    t = r_after(original model) - r_before(narrowed model),

so the narrowed model's residual stream after layer L is as close to the original's as a linear
map of the kept neurons (plus a constant) can bring it. Same neurons kept as `id`; one
calibration pass per layer (each through the graph pruned to that layer's taps).

Measured at each width, against the original on held-out Python documentation and English
prose: `id` (the default), `id sequential` (original FFN output as the target), `id drift`
(the target above) and `variance`. Writes bench/results/slim_drift_<name>.json. Nothing here
is a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))


def drift_refit(study, variant, calib, progress=print):
    """``variant``'s neurons, refitted layer by layer to the drift-correcting target."""
    import numpy as np

    from bench_slim_residual import residual_adds
    from sui_onnx.calib import CalibrationStream
    from sui_onnx.graph import find_taps, tapped_model
    from sui_onnx.graph.surgery import LayerEdit
    from sui_onnx.runner import TapRunner
    from sui_onnx.slimming import Variant, _CrossMoments

    if study.weighting:
        raise SystemExit("the FFN outputs are normalized on their own here: the residual target is not linear in them")
    adds = residual_adds(study)
    orig_taps = find_taps(study.src.model, site="post")
    fits = study.refits(variant.widths, variant.method)
    edits = {i: LayerEdit(r.keep, r.weight, r.bias_delta) for i, (r, _, _) in enumerate(fits)}
    n = len(study.widths)
    for layer in range(n):
        t0 = time.perf_counter()
        narrowed = study.surgery.apply(edits)
        slim_tap = find_taps(narrowed, site="post")[layer]
        m = study.surgery.plans[layer].out_width
        before, after = adds[layer]
        k = variant.widths[layer]
        full = TapRunner(tapped_model(study.src, [replace(orig_taps[layer], tensor=after, width=m)]).SerializeToString(),
                         [after], "cpu", external_folder=study.src.data_folder)
        src = replace(study.src, model=narrowed)
        taps = [slim_tap, replace(slim_tap, tensor=before, width=m)]
        narrow = TapRunner(tapped_model(src, taps).SerializeToString(), [slim_tap.tensor, before], "cpu",
                           external_folder=study.src.data_folder)
        del narrowed
        moments = _CrossMoments(k, m)
        for batch in CalibrationStream(calib, study.src.folder, [study.widths[layer]]):
            r_after = np.asarray(full.run(batch.input_ids, [m])[0], dtype=np.float32).reshape(-1, m)
            hs, r_before = narrow.run(batch.input_ids, [k, m])
            hs = np.asarray(hs, dtype=np.float32).reshape(-1, k)
            target = r_after - np.asarray(r_before, dtype=np.float32).reshape(-1, m)
            moments.update(hs, target, np.ones(hs.shape[0], np.float32))
        weight, intercept = moments.fit(study.ridge)
        _, bias = study._down_arrays(layer)
        edits[layer] = LayerEdit(variant.keep[layer], weight, intercept - bias.astype(np.float64))
        progress(f"  drift refit layer {layer + 1}/{n}: {time.perf_counter() - t0:.1f} s")
    return Variant(variant.label + " drift", "slim", variant.method, list(variant.widths),
                   study.surgery.apply(edits), list(variant.keep))


def main() -> None:
    from sui_onnx.slimming import refine

    from _slim_common import add_study_args, evaluator, measure_row, plain_study, ratio_widths, texts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_args(ap)
    ap.add_argument("--skip-sequential", action="store_true", help="leave out the sequential refit (measured before)")
    args = ap.parse_args()

    calib, evals = texts(args.calib, args.eval)
    spec, study, study_s = plain_study(args, calib)
    ev = evaluator(study, evals, args)
    rows = []
    for r in args.ratios:
        widths = ratio_widths(study, r)
        plain = study.variant(widths, "id")
        variants = [("id", plain, None)]
        t1 = time.perf_counter()
        drift = drift_refit(study, plain, spec)
        variants.append(("id drift", drift, time.perf_counter() - t1))
        if not args.skip_sequential:
            t1 = time.perf_counter()
            variants.append(("id sequential", refine(study, plain, spec, sequential=True), time.perf_counter() - t1))
        variants.append(("variance", study.variant(widths, "variance"), None))
        for name, v, secs in variants:
            rows.append(measure_row(ev, study, r, name, v, secs))
    path = HERE / "results" / f"slim_drift_{args.name}.json"
    path.write_text(json.dumps({"model": str(args.model), "tokens": args.tokens, "eval_tokens": args.eval_tokens,
                                "eval_seq_len": args.eval_seq_len, "ridge": study.ridge, "study_s": study_s,
                                "rows": rows}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
