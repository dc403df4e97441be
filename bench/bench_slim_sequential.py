"""Two refits that use more than the calibration statistics, against the plain one (docs/slim.md).

    python bench/bench_slim_sequential.py models/work/gemma/onnx --name gemma3_270m

One calibration on Python documentation (token-weighted where the FFN output is normalized on
its own); at the widths asked, with the same neurons kept:
- `id`: the plain least-squares refit from the calibration statistics;
- `id sequential` (slimming.refine(sequential=True)): layer L refitted, first to last, on the
  inputs the narrowed model whose layers before L are already refitted gives it, against the
  original's FFN output: one calibration pass per layer;
- `id exact-bos`: where every window starts with the tokenizer's special prefix (Gemma's
  <bos>), that position sees the same input in every window, so its FFN activations are one
  fixed vector per layer. The refit is centred there (the bias makes the narrow FFN exact at
  it; the second moments are taken about it), so by induction the narrowed model reproduces
  the original at that position in every layer: the attention-sink hypothesis, tested;
- `variance`, the baseline.
Each is measured against the original on held-out Python documentation and English prose.
Writes bench/results/slim_sequential_<name>.json; with --prefix-errors-only, only the plain
refit's relative FFN-output error at the prefix position per layer, to
bench/results/slim_prefix_errors_<name>.json. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))


def tokenizer_prefix(study) -> list[int]:
    """The special tokens the tokenizer puts before every window (Gemma's <bos>); [] without."""
    from sui_onnx.calib import leading_special_ids, load_tokenizer

    tokenizer = load_tokenizer(study.src.folder)
    return leading_special_ids(tokenizer) if tokenizer is not None else []


def prefix_activations(study, model, widths):
    """Per FFN layer, ``model``'s activations at the last token of the tokenizer's prefix, fed
    alone (what every window's first position sees)."""
    from dataclasses import replace

    import numpy as np

    from sui_onnx.graph import find_taps, tapped_model
    from sui_onnx.runner import TapRunner

    taps = find_taps(model, site="post")
    runner = TapRunner(tapped_model(replace(study.src, model=model), taps).SerializeToString(),
                       [t.tensor for t in taps], "cpu", external_folder=study.src.data_folder)
    outs = runner.run(np.asarray([tokenizer_prefix(study)], dtype=np.int64), widths)
    return [np.asarray(o, dtype=np.float64).reshape(-1, d)[-1] for o, d in zip(outs, widths)]


def fixed_prefix_activations(study):
    """The original model's prefix activations per layer (prefix_activations); None without a prefix."""
    return prefix_activations(study, study.src.model, study.widths) if tokenizer_prefix(study) else None


def exact_at(study, variant, points):
    """The variant's neurons, refitted with the intercept and second moments taken about one
    point per layer (so the narrow FFN is exact there)."""
    import numpy as np

    from sui_onnx.graph.surgery import LayerEdit
    from sui_onnx.slim import refit
    from sui_onnx.slimming import Variant

    edits = {}
    for i, (keep, point) in enumerate(zip(variant.keep, points)):
        delta = study.mean[i] - point
        r = refit(study.cov[i] + np.outer(delta, delta), point, study.weights[i], keep, ridge=study.ridge)
        edits[i] = LayerEdit(r.keep, r.weight, r.bias_delta)
    return Variant(variant.label + " exact-bos", "slim", variant.method, list(variant.widths),
                   study.surgery.apply(edits), list(variant.keep))


def prefix_errors(study, variant, points):
    """Per layer, the relative error of the narrowed model's FFN output at the prefix position
    against the original's (the narrowed model fed the prefix alone, as in every window)."""
    import numpy as np

    outs = prefix_activations(study, variant.model, variant.widths)
    errors = []
    fits = study.refits(variant.widths, variant.method)
    for i, ((r, _, _), h, hs) in enumerate(zip(fits, points, outs)):
        w, b = study._down_arrays(i)
        y = h @ w + b
        ys = hs @ r.weight + b + r.bias_delta
        errors.append(float(np.linalg.norm(ys - y) / np.linalg.norm(y)))
    return errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seq-tokens", type=int, default=None, help="tokens per layer for the sequential refit")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--ratios", nargs="+", default=["3/4", "1/2"])
    ap.add_argument("--calib", type=Path, default=None, help="calibration text (default: models.domains' Python docs)")
    ap.add_argument("--eval", type=Path, nargs="+", default=None)
    ap.add_argument("--prefix-errors-only", action="store_true",
                    help="only the plain refit's relative FFN-output error at the prefix position, per layer")
    args = ap.parse_args()

    from sui_onnx.analyze import AnalysisOptions
    from sui_onnx.calib import CalibrationSpec
    from sui_onnx.evaluate import Evaluator, ModelInput
    from sui_onnx.slimming import SlimStudy, aligned, refine

    from _slim_common import measure_row, texts

    calib, evals = texts(args.calib, args.eval)
    spec = CalibrationSpec([calib], tokens=args.tokens)
    seq_spec = CalibrationSpec([calib], tokens=args.seq_tokens or args.tokens)
    t0 = time.perf_counter()
    study = SlimStudy(args.model, spec, AnalysisOptions(device="cpu"))
    study_s = time.perf_counter() - t0
    prefix_hidden = fixed_prefix_activations(study)
    if args.prefix_errors_only:
        out = {}
        for r in args.ratios:
            widths = [aligned(d, float(Fraction(r)), 64) for d in study.widths]
            out[r] = prefix_errors(study, study.variant(widths, "id"), prefix_hidden)
            print(r, " ".join(f"{e:.4f}" for e in out[r]), flush=True)
        path = HERE / "results" / f"slim_prefix_errors_{args.name}.json"
        path.write_text(json.dumps({"model": str(args.model), "tokens": args.tokens, "relative_error": out},
                                   indent=1) + "\n")
        print(f"wrote {path}")
        return
    ev = Evaluator(evals, study.src.folder, ModelInput(path=study.src.path), seq_len=256, tokens=args.eval_tokens,
                   device="cpu", kl=True)
    rows = []
    for r in args.ratios:
        ratio = float(Fraction(r))
        widths = [aligned(d, ratio, 64) for d in study.widths]
        plain = study.variant(widths, "id")
        t1 = time.perf_counter()
        seq = refine(study, plain, seq_spec, sequential=True)
        seq_s = time.perf_counter() - t1
        variants = [("id", plain, None), ("id sequential", seq, seq_s)]
        if prefix_hidden is not None:
            variants.append(("id exact-bos", exact_at(study, plain, prefix_hidden), None))
        variants.append(("variance", study.variant(widths, "variance"), None))
        for name, v, secs in variants:
            rows.append(measure_row(ev, study, r, name, v, secs))
    path = HERE / "results" / f"slim_sequential_{args.name}.json"
    path.write_text(json.dumps({"model": str(args.model), "tokens": args.tokens,
                                "seq_tokens": args.seq_tokens or args.tokens, "eval_tokens": args.eval_tokens,
                                "study_s": study_s, "rows": rows}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
