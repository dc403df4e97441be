"""What the slim benches (bench_slim_sequential, _residual, _drift, _readers) share: their
arguments, texts, the study and its evaluator, and one measured row (a variant against the
original on every eval source); and where bench_slim_merged and bench_eval_arena write their
results (save_result)."""

from __future__ import annotations

import argparse
import json
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def add_study_args(ap: argparse.ArgumentParser, sources: bool = True) -> None:
    """MODEL, --name, --tokens, --eval-tokens, --eval-seq-len, --ratios and (``sources``) --calib / --eval."""
    ap.add_argument("model", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--eval-seq-len", type=int, default=256)
    ap.add_argument("--ratios", nargs="+", default=["3/4", "1/2"])
    if sources:
        ap.add_argument("--calib", type=Path, default=None, help="calibration text (default: models.domains' Python docs)")
        ap.add_argument("--eval", type=Path, nargs="+", default=None, help="held-out texts (with --calib)")


def ratio_widths(study, ratio: str, align: int = 64) -> list[int]:
    """Per-layer widths at ``ratio`` ("3/4") of each layer's D, aligned as slim --ratio does."""
    return study.uniform_widths(ratio=float(Fraction(ratio)), align=align)


def plain_study(args, calib: Path):
    """(calibration spec, SlimStudy on ``calib`` with args.tokens, seconds it took)."""
    from sui_onnx.analyze import AnalysisOptions
    from sui_onnx.calib import CalibrationSpec
    from sui_onnx.slimming import SlimStudy

    spec = CalibrationSpec([calib], tokens=args.tokens)
    t0 = time.perf_counter()
    study = SlimStudy(args.model, spec, AnalysisOptions(device="cpu"))
    return spec, study, time.perf_counter() - t0


def evaluator(study, evals: list[Path], args):
    """The original model's evaluator on ``evals`` (args.eval_seq_len, args.eval_tokens; KL on)."""
    from sui_onnx.evaluate import Evaluator, ModelInput

    return Evaluator(evals, study.src.folder, ModelInput(path=study.src.path), seq_len=args.eval_seq_len,
                     tokens=args.eval_tokens, device="cpu", kl=True)


def texts(calib: Path | None = None, evals: list[Path] | None = None) -> tuple[Path, list[Path]]:
    """(calibration text, held-out texts): the ones given, else models.domains' Python docs
    (built if missing) with held-out Python docs and the bundled English prose."""
    if calib is not None:
        return calib, list(evals or [])
    from models.domains import build

    code, code_heldout = build(ROOT / "models" / "work")
    return code, [code_heldout, ROOT / "sui_onnx" / "data" / "heldout.txt"]


def measure_row(ev, study, width: str, name: str, variant, seconds: float | None = None) -> dict:
    """dCE (with its standard error), KL and top-1 per eval source, printed as one JSON line."""
    from sui_onnx.evaluate import ModelInput

    res = ev.measure(ModelInput(data=variant.model.SerializeToString(), external_folder=study.src.data_folder))
    row = {"width": width, "variant": name, "seconds": seconds,
           "sources": {s.source["path"].rsplit("/", 1)[-1]: {"dce": s.delta_ce, "se": s.delta_ce_se, "kl": s.kl,
                                                             "top1": s.top1}
                       for s in res.sources}}
    print(json.dumps(row), flush=True)
    return row


def save_result(stem: str, out: dict, summary_skip: tuple[str, ...] = ("runs",)) -> Path:
    """Write ``out`` to bench/results/<stem>.json and print it (less the ``summary_skip`` keys)."""
    path = ROOT / "bench" / "results" / f"{stem}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in summary_skip}, indent=1))
    print(f"wrote {path}")
    return path
