"""Argument groups shared by the commands (one definition of model, calibration, device and metric
options, reused by report, check and scaling), and small output helpers."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from ..calib import DEFAULT_BATCH_SIZE, DEFAULT_SEQ_LEN, MIXES, CalibrationSpec
from ..errors import SuiError
from ..metrics import DEFAULT_TOP_FRACTION


def demo_model() -> Path:
    """The bundled, briefly trained GPT-2-style demo model."""
    return Path(str(resources.files("sui_onnx") / "data" / "demo" / "model.onnx"))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _memory(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = units.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in units else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 512M or 4G, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return int(value)


def add_tap_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("FFN taps")
    g.add_argument("--site", choices=("post", "pre"), default="post",
                   help="post: input of the down-projection (after the nonlinearity, default); "
                        "pre: up/gate projection output before it")
    g.add_argument("--include", metavar="REGEX", help="keep only taps whose tensor name matches")
    g.add_argument("--exclude", metavar="REGEX", help="drop taps whose tensor name matches")
    g.add_argument("--tap", metavar="TENSOR", action="append", default=[],
                   help="analyze this tensor explicitly (repeatable; bypasses detection)")


def add_calib_args(p: argparse.ArgumentParser, encoder: bool = True) -> None:
    g = p.add_argument_group("calibration")
    g.add_argument("--calib", metavar="SRC", action="append", default=[], type=Path,
                   help=".txt file, folder of .txt, .jsonl with a \"text\" field, or .npy token ids "
                        "[n_sequences, seq_len] (repeatable; default: the bundled English text)")
    g.add_argument("--tokens", type=_positive_int, metavar="N",
                   help="token budget (default: max(16384, 10 x widest FFN), capped at 1M; "
                        ".npy sources are used whole)")
    g.add_argument("--seq-len", type=_positive_int, default=DEFAULT_SEQ_LEN, metavar="L",
                   help=f"window length for text (default {DEFAULT_SEQ_LEN})")
    g.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, metavar="B",
                   help=f"windows per batch (default {DEFAULT_BATCH_SIZE})")
    g.add_argument("--mix", choices=MIXES, default="sequential",
                   help="several --calib sources: sequential (default) feeds them in order until the token "
                        "budget is spent (later ones may get nothing); even gives each an equal share")
    if encoder:  # one model per run (report, check); scaling finds each decoder's encoder beside it
        g.add_argument("--encoder", type=Path, metavar="ENCODER.onnx",
                       help="seq2seq decoders (T5, BART): the encoder run on each batch to give the decoder "
                            "its encoder_hidden_states; the decoder reads the same tokens (default: "
                            "encoder_model.onnx beside the model)")


def add_device_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when onnxruntime-gpu and a GPU are usable, else CPU")
    g.add_argument("--threads", type=_positive_int, metavar="N", help="onnxruntime intra-op threads (default: all cores)")
    g.add_argument("--precision", choices=("fp32", "fp64"), default="fp32",
                   help="per-batch X^T X in float32 (default, fast; sums are always float64) or float64 (exact)")


def add_metric_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("metrics and advice")
    g.add_argument("--top-fraction", type=_fraction, default=DEFAULT_TOP_FRACTION, metavar="F",
                   help="spectral concentration's top fraction f (project-defined, default 0.10)")
    g.add_argument("--advice-q", type=_fraction, default=0.95, metavar="Q",
                   help="variance share the recommended width keeps per layer (default 0.95)")
    g.add_argument("--advice-quantile", type=_fraction, default=1.0, metavar="P",
                   help="quantile over layers of k_q (default 1.0 = the most demanding layer)")
    g.add_argument("--align", type=_positive_int, default=64, metavar="N",
                   help="round the recommended width up to a multiple of N (default 64)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("long runs")
    g.add_argument("--checkpoint", type=Path, metavar="FILE", help="save statistics to FILE every --checkpoint-every batches and at the end")
    g.add_argument("--checkpoint-every", type=_positive_int, default=50, metavar="K", help="batches between checkpoints (default 50)")
    g.add_argument("--resume", type=Path, metavar="FILE", help="continue an interrupted run from its checkpoint")
    g.add_argument("--stats", type=Path, metavar="FILE",
                   help="report from finished or merged statistics (sui-onnx merge) without running calibration")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="shard the calibration across Ray workers (needs the `ray` extra); without ADDRESS: "
                        "RAY_ADDRESS or a local cluster. Put MODEL before --ray, or write --ray=ADDRESS")
    g.add_argument("--ray-shards", type=_positive_int, metavar="N", help="calibration shards for --ray (default: 2 per worker CPU)")
    g.add_argument("--max-memory", type=_memory, metavar="SIZE",
                   help="cap on the D x D statistics held at once (e.g. 2G); above it the layers are analyzed in several passes "
                        "(default: half the memory left after loading the model)")


def add_analysis_args(p: argparse.ArgumentParser, long_runs: bool = True) -> None:
    """Every option that shapes an analysis (taps, calibration, device, metrics[, long runs and
    --encoder, which concern one model]): `report`, `check` and `scaling` take the same flags in
    the same way."""
    add_tap_args(p)
    add_calib_args(p, encoder=long_runs)
    add_device_args(p)
    add_metric_args(p)
    if long_runs:
        add_run_args(p)


def calibration_spec(args: argparse.Namespace) -> CalibrationSpec:
    return CalibrationSpec(sources=list(args.calib), seq_len=args.seq_len, batch_size=args.batch_size, tokens=args.tokens,
                           mix=getattr(args, "mix", "sequential"))


def analysis_options(args: argparse.Namespace, progress: Any = None):
    from ..analyze import AnalysisOptions

    return AnalysisOptions(
        site=args.site, include=args.include, exclude=args.exclude, explicit=tuple(args.tap),
        device=args.device, threads=args.threads, precision=args.precision, top_fraction=args.top_fraction,
        advice_q=args.advice_q, advice_quantile=args.advice_quantile, align=args.align,
        max_memory=args.max_memory, checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
        resume=args.resume, stats=args.stats, progress=progress, ray=args.ray, ray_shards=args.ray_shards,
        encoder=getattr(args, "encoder", None),
    )


def model_argument(args: argparse.Namespace) -> Path:
    return Path(args.model) if args.model else demo_model()


def guard_outputs(inputs: Iterable[Path | None], outputs: Iterable[Path | None]) -> None:
    """Refuse to write over an input file (the model, calibration data, a checkpoint being read),
    and check output folders exist before any work starts."""
    ins: set[Path] = set()
    for p in inputs:
        if p is None or not p.exists():
            continue
        ins.add(p.resolve())
        if p.is_dir():  # a model folder (model.onnx, external data, tokenizer) or a folder of text
            ins.update(f.resolve() for f in p.rglob("*") if f.is_file())
    for out in outputs:
        if out is None or str(out) == "-":
            continue
        if out.resolve() in ins:
            raise SuiError(f"refusing to write {out}: it is an input of this run")
        if out.is_dir():
            raise SuiError(f"cannot write {out}: it is a folder")
        parent = out.resolve().parent
        if not parent.is_dir():
            raise SuiError(f"cannot write {out}: folder {parent} does not exist")


def write_text_atomic(path: Path, text: str) -> None:
    from ..spectrum import atomic_write_bytes

    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write_bytes(path, lambda fh: fh.write(text.encode("utf-8")))


def make_console(quiet: bool = False, stderr: bool = False, file: Any = None):
    from rich.console import Console

    return Console(stderr=stderr, quiet=quiet, highlight=False, soft_wrap=False, file=file,
                   no_color=bool(os.environ.get("NO_COLOR")) or None)


class TokenProgress:
    """A rich progress bar (tokens, tokens/s, ETA) on stderr; silent when stderr is not a TTY."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self._progress = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("tok"),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=make_console(stderr=True), transient=True,
            )
            self._progress.__enter__()
        return self

    def __call__(self, done: int, total: int, desc: str) -> None:
        if self._progress is None:
            return
        if self._task is None:
            self._task = self._progress.add_task(desc, total=total, rate="")
        task = self._progress.tasks[0]
        speed = task.speed or 0
        self._progress.update(self._task, completed=min(done, total), total=total, description=desc,
                              rate=f"{speed:,.0f} tok/s" if speed else "")

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False
