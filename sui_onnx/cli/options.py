"""Argument groups shared by the commands (one definition of model, calibration, device and metric
options, reused by report, check and scaling), and small output helpers."""

from __future__ import annotations

import argparse
import json
import math
import os
import stat
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..calib import DEFAULT_BATCH_SIZE, DEFAULT_SEQ_LEN, MIXES, CalibrationSpec
from ..config import DEVICES, PRECISIONS, SITES
from ..errors import SuiError
from ..layout import DESCRIPTION_FILES, ENCODER_FILE, MODEL_FILE
from ..metrics import DEFAULT_TOP_FRACTION
from ..safeio import atomic_write, check_input, output_target, printable, special_kind, system_path


def package_data_folder() -> Path:
    """sui_onnx/data: the bundled demo model, calibration and held-out text."""
    return Path(str(resources.files("sui_onnx") / "data"))


def in_package_data(path: Path) -> bool:
    """Whether an output would land in the package's own data (never an output of a run, whether or
    not this run reads the file it would replace)."""
    root = os.path.realpath(package_data_folder())
    target = os.path.realpath(path)
    return target == root or target.startswith(root + os.sep)


def demo_model() -> Path:
    """The bundled, briefly trained GPT-2-style demo model."""
    return Path(str(resources.files("sui_onnx") / "data" / "demo" / MODEL_FILE))


# -- argument types: the one family of validators every command uses; each raises
# argparse.ArgumentTypeError, which argparse turns into one usage line and exit code 2
def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (a count, a width, a length)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def path_arg(text: str) -> Path:
    """A path argument; an empty one is an error (Path("") would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def fraction(text: str) -> float:
    """A number in (0, 1] (a share, an energy level, a quantile)."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def unit_number(text: str) -> float:
    """A finite number in [0, 1] (an R^2 floor)."""
    value = _number(text)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def positive_number(text: str) -> float:
    """A finite number > 0 (a tolerance)."""
    value = _number(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def nonnegative_number(text: str) -> float:
    """A finite number >= 0 (a loss budget in nats, a ridge)."""
    value = _number(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def memory_size(text: str) -> int:
    """A size in bytes: 512M, 4G, 1.5GiB, 1000000."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = units.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in units else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 512M or 4G, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite size like 512M or 4G, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least one byte, got {text!r}")
    if value > MAX_MEMORY:
        raise argparse.ArgumentTypeError(f"{text!r} is more memory than any machine has (at most 1P)")
    return int(value)


MAX_MEMORY = 2**50  # 1 PiB: a larger cap is a typo, not a machine


def thread_count(text: str) -> int:
    """A thread count: at least 1, at most runner.max_threads() (4 per core)."""
    from ..runner import max_threads

    value = positive_int(text)
    limit = max_threads()
    if value > limit:
        raise argparse.ArgumentTypeError(f"at most {limit} (4 per core), got {value}")
    return value


def json_object(text: str) -> dict:
    """A JSON object (keyword arguments)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"d_model\": 64}'")
    return value


def add_tap_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("FFN taps")
    g.add_argument("--site", choices=SITES, default="post",
                   help="post: input of the down-projection (after the nonlinearity, default); "
                        "pre: up/gate projection output before it")
    g.add_argument("--include", metavar="REGEX", help="keep only taps whose tensor name matches")
    g.add_argument("--exclude", metavar="REGEX", help="drop taps whose tensor name matches")
    g.add_argument("--tap", metavar="TENSOR", action="append", default=[],
                   help="analyze this tensor explicitly (repeatable; bypasses detection; a detected FFN tap keeps its layer number)")


def add_calib_args(p: argparse.ArgumentParser, encoder: bool = True) -> None:
    g = p.add_argument_group("calibration")
    g.add_argument("--calib", metavar="SRC", action="append", default=[], type=path_arg,
                   help=".txt file, folder of .txt, .jsonl with a \"text\" field, or .npy token ids "
                        "[n_sequences, seq_len] (repeatable; default: the bundled English text)")
    g.add_argument("--tokens", type=positive_int, metavar="N",
                   help="token budget (default: max(16384, 10 x widest FFN), capped at 1M; "
                        ".npy sources are used whole)")
    g.add_argument("--seq-len", type=positive_int, default=DEFAULT_SEQ_LEN, metavar="L",
                   help=f"window length for text (default {DEFAULT_SEQ_LEN})")
    g.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, metavar="B",
                   help=f"windows per batch (default {DEFAULT_BATCH_SIZE})")
    g.add_argument("--mix", choices=MIXES, default="sequential",
                   help="several --calib sources: sequential (default) feeds them in order until the token "
                        "budget is spent (later ones may get nothing); even gives each an equal share (what a short source leaves goes to the others)")
    if encoder:  # one model per run (report, check); scaling finds each decoder's encoder beside it
        g.add_argument("--encoder", type=path_arg, metavar="ENCODER.onnx",
                       help="seq2seq decoders (T5, BART): the encoder run on each batch to give the decoder "
                            "its encoder_hidden_states; the decoder reads the same tokens (default: "
                            "encoder_model.onnx beside the model). A decoder that takes inputs_embeds "
                            "(a vision-language model's, transformers.js layout): the embed_tokens model "
                            "that gives them (default: embed_tokens.onnx beside it)")


def add_device_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device")
    g.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto: CUDA when onnxruntime-gpu and a GPU are usable, else CPU")
    g.add_argument("--threads", type=thread_count, metavar="N",
                   help="onnxruntime intra-op threads (default: all cores; at most 4 per core)")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="per-batch X^T X in float32 (default, fast; sums are always float64) or float64 (exact)")


def add_metric_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("metrics and advice")
    g.add_argument("--top-fraction", type=fraction, default=DEFAULT_TOP_FRACTION, metavar="F",
                   help="spectral concentration's top fraction f (project-defined, default 0.10)")
    g.add_argument("--advice-q", type=fraction, default=0.95, metavar="Q",
                   help="variance share the recommended width keeps per layer (default 0.95)")
    g.add_argument("--advice-quantile", type=fraction, default=1.0, metavar="P",
                   help="quantile over layers of k_q (default 1.0 = the most demanding layer)")
    g.add_argument("--align", type=positive_int, default=64, metavar="N",
                   help="round the recommended width up to a multiple of N (default 64)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("long runs")
    g.add_argument("--checkpoint", type=path_arg, metavar="FILE",
                   help="save statistics to FILE every --checkpoint-every batches and at the end. Without it, "
                        "an interrupted run (Ctrl-C, SIGTERM) saves them to MODEL.sui-checkpoint.npz in the current "
                        "folder (MODEL: the model file's name without .onnx; MODEL-2..., when that file exists)")
    g.add_argument("--checkpoint-every", type=positive_int, default=50, metavar="K", help="batches between checkpoints (default 50)")
    g.add_argument("--resume", type=path_arg, metavar="FILE", help="continue an interrupted run from its checkpoint (--checkpoint may name the same file)")
    g.add_argument("--stats", type=path_arg, metavar="FILE",
                   help="report from finished or merged statistics (sui-onnx merge) without running calibration "
                        "(the calibration options --calib, --tokens, --mix, --resume, --checkpoint, "
                        "--checkpoint-every, --ray, --ray-shards and --precision are refused beside it)")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="shard the calibration across Ray workers (needs the `ray` extra); without ADDRESS: "
                        "RAY_ADDRESS or a local cluster. Put MODEL before --ray, or write --ray=ADDRESS")
    g.add_argument("--ray-shards", type=positive_int, metavar="N", help="calibration shards for --ray (default: 2 per worker slot: "
                   "its CPUs divided by --threads, or one GPU)")
    g.add_argument("--max-memory", type=memory_size, metavar="SIZE",
                   help="cap on the D x D statistics held at once (e.g. 2G); above it the layers are analyzed in several passes, "
                        "and slim keeps the covariances past it memory-mapped in a temporary folder "
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


def calib_inputs(args: argparse.Namespace) -> list[Path]:
    """The calibration sources a run reads, for the output guard: --calib, or the bundled text
    when none is given (an output on it would overwrite the package's own data)."""
    from ..calib import bundled_corpus

    return list(args.calib) if args.calib else [bundled_corpus()]


def calibration_spec(args: argparse.Namespace) -> CalibrationSpec:
    return CalibrationSpec(sources=list(args.calib), seq_len=args.seq_len, batch_size=args.batch_size, tokens=args.tokens,
                           mix=getattr(args, "mix", "sequential"))


# options that only shape a calibration run, with their defaults: --stats runs none, so each of them
# given with --stats would be ignored, and is refused instead
_CALIBRATION_ONLY = (("calib", "--calib", []), ("tokens", "--tokens", None), ("mix", "--mix", "sequential"),
                     ("resume", "--resume", None), ("checkpoint", "--checkpoint", None),
                     ("checkpoint_every", "--checkpoint-every", 50), ("ray", "--ray", None),
                     ("ray_shards", "--ray-shards", None), ("precision", "--precision", "fp32"))


def refuse_ignored_with_stats(args: argparse.Namespace) -> None:
    """--stats reads finished statistics instead of calibrating: the options of a calibration run
    would silently do nothing with it, so they are a usage error that names them."""
    if getattr(args, "stats", None) is None:
        return
    given = [flag for dest, flag, default in _CALIBRATION_ONLY
             if hasattr(args, dest) and getattr(args, dest) != default]
    if given:
        raise SuiError(f"--stats reads finished statistics and runs no calibration: {', '.join(given)} would be "
                       f"ignored; leave {'it' if len(given) == 1 else 'them'} out (or calibrate again without --stats)")


def _given_flags(args: argparse.Namespace, defaults: dict[str, Any]) -> list[str]:
    """The flags (``--dest-name``) among ``defaults`` whose value in ``args`` is not the default."""
    return ["--" + dest.replace("_", "-") for dest, default in defaults.items() if getattr(args, dest, default) != default]


def refuse_analysis_with_report(args: argparse.Namespace) -> None:
    """A report JSON is checked as it was written: every option that shapes an analysis (taps,
    calibration, device, metrics, long runs) would silently do nothing with it, so one given is a
    usage error that names it."""
    parser = argparse.ArgumentParser(add_help=False)
    add_analysis_args(parser)
    given = _given_flags(args, vars(parser.parse_args([])))
    if given:
        raise SuiError(f"the target is a report JSON, checked as it was written: {', '.join(given)} "
                       f"{'shapes' if len(given) == 1 else 'shape'} an analysis and would be ignored; leave "
                       f"{'it' if len(given) == 1 else 'them'} out (or check the model itself)")


def refuse_eval_options_without_eval(args: argparse.Namespace, defaults: dict[str, Any]) -> None:
    """--eval-tokens, --eval-seq-len (and report's --max-loss-increase) shape the --eval measurement:
    without --eval they would do nothing, so they are a usage error."""
    if getattr(args, "eval", None):
        return
    given = _given_flags(args, defaults)
    if given:
        raise SuiError(f"{', '.join(given)} {'shapes' if len(given) == 1 else 'shape'} the held-out measurement: "
                       "give --eval HELDOUT (or leave " + ("it" if len(given) == 1 else "them") + " out)")


def resume_input(args: argparse.Namespace) -> Path | None:
    """--resume FILE as an input of the run, for the output guard: none when --checkpoint is the same
    file (resuming into the checkpoint one continues is what a user does; it is read whole first and
    saved atomically)."""
    resume, checkpoint = getattr(args, "resume", None), getattr(args, "checkpoint", None)
    if resume is None or checkpoint is None:
        return resume
    try:
        if Path(resume).resolve() == Path(checkpoint).resolve() or Path(resume).samefile(checkpoint):
            return None
    except OSError:
        pass
    return resume


def analysis_options(args: argparse.Namespace, progress: Any = None, long_runs: bool = True):
    """The options of add_analysis_args(p, long_runs); without the long-run group (scaling) its
    options keep their defaults (AnalysisOptions')."""
    from ..analyze import AnalysisOptions
    from ..stopping import StopOnSignal

    if long_runs:
        refuse_ignored_with_stats(args)
    runs = dict(max_memory=args.max_memory, checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                resume=args.resume, stats=args.stats, ray=args.ray, ray_shards=args.ray_shards) if long_runs else {}
    return AnalysisOptions(
        site=args.site, include=args.include, exclude=args.exclude, explicit=tuple(args.tap),
        device=args.device, threads=args.threads, precision=args.precision, top_fraction=args.top_fraction,
        advice_q=args.advice_q, advice_quantile=args.advice_quantile, align=args.align, progress=progress, **runs,
        encoder=getattr(args, "encoder", None), stop=StopOnSignal(),  # SIGINT/SIGTERM stop at a batch boundary
    )


def model_argument(args: argparse.Namespace) -> Path:
    """MODEL as given, or the bundled demo model when it is left out (an empty MODEL is an error)."""
    if args.model is None:
        return demo_model()
    if not str(args.model).strip():
        raise SuiError("MODEL is an empty path (leave it out for the bundled demo model)")
    return Path(args.model)


# files beside a model that belong to it: what a run reads (tokenizer, seq2seq encoder, onnxruntime-genai
# configuration) and the rest of an exported model folder (its config); none of them is ever an output
MODEL_COMPANIONS = DESCRIPTION_FILES + (ENCODER_FILE,)
NOT_TO_STDOUT = ("--checkpoint", "--output")  # checkpoints and merged statistics: files, never '-'
_MAX_FOLDER_FILES = 200_000  # a folder input with more files than this is not walked further


class FileSet:
    """Files compared by real path (symlinks resolved) and, where they exist, by device and inode
    (hard links, bind mounts, case-insensitive file systems)."""

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.inodes: set[tuple[int, int]] = set()

    @staticmethod
    def keys(p: Path) -> tuple[str | None, tuple[int, int] | None]:
        try:
            real = os.path.realpath(p)
        except (OSError, ValueError):
            return None, None
        try:
            st = os.stat(real)
            inode = (st.st_dev, st.st_ino) if not stat.S_ISDIR(st.st_mode) else None
        except (OSError, ValueError):
            inode = None
        return real, inode

    def add(self, p: Path) -> None:
        real, inode = self.keys(p)
        if real is not None:
            self.paths.add(real)
        if inode is not None:
            self.inodes.add(inode)

    def __contains__(self, p: Path) -> bool:
        real, inode = self.keys(p)
        return real in self.paths or (inode is not None and inode in self.inodes)


def _folder_files(folder: Path) -> Iterator[Path]:
    """Every file under ``folder``, symlinked folders followed once; unreadable parts are skipped
    (they cannot be read, so they cannot be the run's input either)."""
    seen: set[str] = set()
    count = 0
    for root, dirs, files in os.walk(folder, followlinks=True, onerror=lambda exc: None):
        real = os.path.realpath(root)
        if real in seen:  # a symlink loop, or a folder reached twice
            dirs[:] = []
            continue
        seen.add(real)
        for name in files:
            count += 1
            if count > _MAX_FOLDER_FILES:
                return
            yield Path(root) / name


def _external_locations(model_file: Path) -> set[str]:
    """The external-data locations a model's graph names (function bodies and subgraphs included),
    read without its weights; empty for a file that does not parse (the run then refuses it)."""
    import onnx

    from ..graph import lean
    from ..graph.source import external_info, model_tensors

    try:
        data, _ = lean.read_lean(Path(os.path.realpath(model_file)))
        model = onnx.ModelProto.FromString(data)
    except Exception:  # not a model: the analysis says so before anything is written
        return set()
    tensors = list(model_tensors(model))
    return {loc for t in tensors if (loc := external_info(t).get("location"))}


def _is_model_folder(folder: Path) -> bool:
    """Whether ``folder`` is a model (a run on it finds its .onnx file), not a folder of text."""
    from ..graph.source import resolve_model_path

    try:
        resolve_model_path(folder)
    except SuiError:
        return False
    return True


def model_inputs(model: Path | None) -> list[Path]:
    """Every file a run on ``model`` (a file or folder, symlinks such as a Hugging Face cache
    snapshot's included) reads, or that belongs to the model beside it: the model file and the file
    it links to, its external data, its tokenizer, a seq2seq encoder and that encoder's external data,
    the model folder's configuration files."""
    if model is None:
        return []
    from ..graph.source import resolve_model_path

    model = Path(model)
    files = [model]
    try:
        file = resolve_model_path(model)
    except SuiError:
        return files  # the run refuses it before anything is written
    models = [file]
    folders = list(dict.fromkeys([file.parent, Path(os.path.realpath(file)).parent]))
    for folder in folders:
        files += [folder / name for name in MODEL_COMPANIONS]
        if folder.name == "onnx":  # transformers.js layout: the tokenizer one level up
            files += [folder.parent / name for name in MODEL_COMPANIONS]
        if (folder / ENCODER_FILE).is_file():
            models.append(folder / ENCODER_FILE)
    for m in dict.fromkeys(models):
        files.append(m)
        m_folders = list(dict.fromkeys([m.parent, Path(os.path.realpath(m)).parent]))
        for location in _external_locations(m):
            files += [folder / location for folder in m_folders]
    return files


def _label(item: Any) -> tuple[str, Path | None]:
    if isinstance(item, tuple):
        flag, path = item
        return f"{flag} ", None if path is None else Path(path)
    return "", None if item is None else Path(item)


def _check_writable_folder(label: str, out: Path, folder: Path, probed: dict[str, bool] | None = None) -> None:
    """The folder exists and a file can be created in it: os.access first, then (it answers yes
    for root everywhere but on read-only mounts) a probe file created and removed at once."""
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise SuiError(f"cannot write {label}{printable(out)}: {printable(folder)} {what}")
    key = os.path.realpath(folder)
    ok = probed.get(key) if probed is not None else None
    if ok is None:
        ok = os.access(folder, os.W_OK | os.X_OK)
        if ok:
            try:
                fd, probe = tempfile.mkstemp(prefix=".sui-onnx-probe-", dir=folder)
                os.close(fd)
                os.unlink(probe)
            except OSError:
                ok = False
        if probed is not None:
            probed[key] = ok
    if not ok:
        raise SuiError(f"cannot write {label}{printable(out)}: folder {printable(folder)} is not writable")


def _check_name_length(label: str, out: Path, target: Path) -> None:
    """The temporary file beside the output (".NAME.xxxxxxxx.tmp") must fit the file system's name
    limit too, or the write would fail after the work."""
    folder = target.parent if target.parent.is_dir() else Path(".")
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    if len(os.fsencode(target.name)) + 14 > limit:
        raise SuiError(f"cannot write {label}{printable(out)}: the file name is too long for this file system "
                       f"(at most {limit - 14} bytes for an output)")


def guard_outputs(inputs: Iterable[Path | None], outputs: Iterable[Any],
                  folders: Iterable[tuple[str, Path | None, Iterable[str]]] = ()) -> None:
    """Check every output before any work starts, so that nothing is written when one is wrong
    (docs/security.md). ``outputs`` are paths or (flag, path) pairs (None: not asked for); ``-`` is
    standard output. Refused, with one line:

    - an output that is an input of the run: any of ``inputs``, any file inside an input folder, and
      for a model (a file or folder) every file :func:`model_inputs` names (a symlink or hard link
      to one of them counts as that file);
    - a new ``.txt`` output inside an input folder of text (one without an ``.onnx`` model): the
      next run over that folder would read it as calibration text;
    - two outputs on the same file, or more than one on standard output;
    - an output that is a folder, a FIFO, a device or another special file (``-`` is the way to
      standard output);
    - an output whose folder does not exist or is not writable.

    ``folders`` holds (flag, DIR, file names) for outputs that are folders (``--plot DIR``): DIR
    may be created, but must not be a file, and the files written into it are checked like the
    other outputs. Inputs that exist but are special files (a FIFO, a device) are refused too.
    """
    ins = FileSet()
    text_folders: list[tuple[Path, str]] = []  # (input folder of text, its real path)
    for item in inputs:
        if item is None:
            continue
        p = Path(item)
        check_input(p)
        ins.add(p)
        if p.is_dir():  # a model folder (model.onnx, external data, tokenizer) or a folder of text
            for f in _folder_files(p):
                ins.add(f)
            if not _is_model_folder(p):
                text_folders.append((p, os.path.realpath(p)))
        if p.suffix.lower() == ".onnx" or p.is_dir():
            for f in model_inputs(p):
                ins.add(f)
    named = [_label(o) for o in outputs]
    probed: dict[str, bool] = {}
    created: set[Path] = set()  # folder outputs not there yet: their files' folder is checked above them
    for flag, d, names in folders:
        if d is None:
            continue
        d = Path(d)
        if d.exists() and not d.is_dir():
            raise SuiError(f"{flag} {printable(d)}: exists and is not a folder")
        if system_path(d / "x") is not None:
            raise SuiError(f"refusing to write {flag} {printable(d)}: it is in {system_path(d / 'x')}, not a folder of yours")
        anc = Path(os.path.realpath(d))
        while not anc.exists() and anc != anc.parent:
            anc = anc.parent
        _check_writable_folder(f"{flag} ", d, anc, probed)
        if not d.exists():
            created.add(d)
        named += [(f"{flag} ", d / name) for name in names]
    seen = FileSet()
    stdout = 0
    for label, out in named:
        if out is None:
            continue
        if str(out) == "-":
            if label.strip() in NOT_TO_STDOUT:
                raise SuiError(f"{label}-: this output is a file; standard output cannot take it")
            stdout += 1
            if stdout > 1:
                raise SuiError("only one output can go to standard output ('-')")
            continue
        if not str(out):
            raise SuiError(f"{label}: empty output path")
        if "\x00" in str(out):
            raise SuiError(f"{label}{printable(out)}: not a valid path (a NUL byte)")
        target = output_target(out)
        kind = special_kind(out) or special_kind(target)  # the path itself first: /dev/stdout is a magic link
        if os.path.isdir(out):
            raise SuiError(f"cannot write {label}{printable(out)}: it is a folder")
        if kind is not None:
            raise SuiError(f"refusing to write {label}{printable(out)}: it is a {kind}, not a regular file "
                           "(use '-' for standard output)")
        tree = system_path(out)
        if tree is not None:  # /dev/stdout is the stream even when it is redirected to a regular file
            raise SuiError(f"refusing to write {label}{printable(out)}: it is in {tree}, not a file of yours "
                           "(use '-' for standard output)")
        if out in ins:
            raise SuiError(f"refusing to write {label}{printable(out)}: it is an input of this run")
        if Path(out).suffix == ".txt":  # a folder of text reads every *.txt under it, at any depth
            real = os.path.realpath(target)
            inside = next((f for f, r in text_folders if real.startswith(r.rstrip(os.sep) + os.sep)), None)
            if inside is not None:
                raise SuiError(f"refusing to write {label}{printable(out)}: it is inside the text folder "
                               f"{printable(inside)} this run reads, so the next run over it would take it for "
                               "text; write it elsewhere")
        if in_package_data(out):
            raise SuiError(f"refusing to write {label}{printable(out)}: it is in sui-onnx's own bundled data "
                           f"({printable(package_data_folder())}); write it elsewhere")
        first = next((lab for lab, o in named[: named.index((label, out))] if o is not None and str(o) != "-"
                      and FileSet.keys(o)[0] == FileSet.keys(out)[0]), None)
        if out in seen:
            both = f"{first.strip() or 'an output'} and {label.strip() or 'another'}" if first is not None else "two outputs"
            raise SuiError(f"{both} name the same file {printable(out)}: one would overwrite the other")
        seen.add(out)
        if out.parent not in created:
            _check_writable_folder(label, out, target.parent, probed)
        _check_name_length(label, out, target)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (safeio.atomic_write), or to standard output
    for ``-``."""
    if str(path) == "-":
        write_bytes_atomic(path, lambda fh: fh.write(text.encode("utf-8")))
        return
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_bytes_atomic(path: Path, write: Any) -> None:
    """Call ``write(fileobj)`` for ``path``: a file written atomically (safeio.atomic_write), or
    standard output for ``-`` (closed, or a pipe whose reader went away: one SuiError line)."""
    if str(path) != "-":
        atomic_write(path, write)
        return
    try:
        sys.stdout.flush()
        write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        try:  # the reader (| head) is gone: no "Exception ignored" at exit either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        raise SuiError("standard output was closed before everything was written (broken pipe)") from None
    except (AttributeError, OSError, ValueError) as exc:  # no stdout at all (>&-)
        raise SuiError(f"cannot write to standard output ({exc.__class__.__name__})") from None


def make_console(quiet: bool = False, stderr: bool = False, file: Any = None):
    from rich.console import Console

    return Console(stderr=stderr, quiet=quiet, highlight=False, soft_wrap=False, file=file,
                   no_color=bool(os.environ.get("NO_COLOR")) or None)


def print_warnings(warnings, quiet: bool, console=None) -> None:
    """A run's warnings: in yellow after the terminal table, or, when the table is not printed
    (--quiet, or the JSON goes to standard output), one ``sui-onnx: warning:`` line each on stderr.
    -q silences the table and the progress bar, never a warning."""
    if not quiet and console is not None:
        from rich.markup import escape

        for w in warnings:
            console.print(f"[yellow]warning: {escape(w)}[/yellow]")
        return
    for w in warnings:
        print(f"sui-onnx: warning: {w}", file=sys.stderr, flush=True)


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


def require_narrower_width(src: Any, align: int, verb: str) -> None:
    """Widths are multiples of --align below the widest FFN of ``src`` (a loaded ModelSource):
    refused, before calibrating, when there is none (``verb``: what the command would do with
    them, "search" or "measure")."""
    from ..graph import find_taps

    widths = [t.width for t in find_taps(src.model)]
    if widths and align >= max(widths):
        raise SuiError(f"--align {align} leaves no narrower width to {verb}: the widest FFN is {max(widths)} wide "
                       f"(use an --align below {max(widths)})")
