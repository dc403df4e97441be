"""Command-line interface: the only module that parses arguments, prints, and picks exit codes.

Exit codes (every command, every output format): 0 success; 1 a gate threshold was breached;
2 usage, input or configuration error (one line on stderr; --debug, before or after the command,
also shows the traceback, and the exit code stays 2); 130 interrupted by SIGINT/SIGTERM (a checkpoint
was saved; --resume continues). Error lines are printable text: control characters and escape
sequences from file names, tensor names or arguments are shown as escapes, never sent raw.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

from .._version import __version__
from ..errors import SuiError, first_line
from .flags import cli_message

EXIT_OK, EXIT_BREACH, EXIT_ERROR = 0, 1, 2
EXIT_INTERRUPTED = 130  # SIGINT/SIGTERM during a run: a checkpoint was saved, nothing half-written
CHECKPOINT_SUFFIX = ".sui-checkpoint.npz"  # the default checkpoint of an interrupted run (see --checkpoint)

class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line on usage errors (its default prints usage too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        from ..safeio import printable

        self.exit(EXIT_ERROR, f"{printable(self.prog)}: error: {printable(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sui-onnx",
        description=(
            "How much of its FFN width does your model use? Finds the feed-forward blocks of an "
            "ONNX transformer, runs calibration text through onnxruntime and reports hard rank, "
            "soft rank, spectral concentration and the Spectral Utilization Index per layer."
        ),
        epilog="Exit codes: 0 success, 1 a gate threshold was breached, 2 usage/input/config error, "
               "130 interrupted (Ctrl-C or SIGTERM; a calibration run saves a checkpoint first).",
    )
    parser.add_argument("--version", action="version", version=f"sui-onnx {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for register in _commands():
        register(sub)
    for command in sub.choices.values():  # --debug after the command too (`sui-onnx report --debug`)
        if not any("--debug" in a.option_strings for a in command._actions):
            command.add_argument("--debug", dest="sub_debug", action="store_true", default=False,
                                 help="show the full traceback on errors (the exit code stays the same)")
    return parser


def _commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Each command module registers its subparser; imports stay light (no onnxruntime here)."""
    from . import commands

    return commands.REGISTRY


def _say(text: str) -> None:
    """One line on stderr: printable (no raw control characters or escape sequences), never raising."""
    from ..safeio import printable

    try:
        print(f"sui-onnx: {printable(text)}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed: the exit code still tells
        pass


def default_checkpoint_path(model: str | Path) -> Path:
    """Where an interrupted run without --checkpoint saves its statistics: MODEL.sui-checkpoint.npz
    (the model file's name without .onnx) in the current folder, shown in --help and in the
    message. An existing file is never overwritten (the checkpoint being resumed from, or another
    model's run of the same file name): MODEL-2.sui-checkpoint.npz, -3, ... then."""
    stem = Path(model).name.removesuffix(".onnx") or "model"
    path = Path(f"{stem}{CHECKPOINT_SUFFIX}")
    k = 2
    while os.path.lexists(path):
        path = Path(f"{stem}-{k}{CHECKPOINT_SUFFIX}")
        k += 1
    return path


def interrupted_message(exc) -> str:
    """What an interrupted run says, once its statistics are saved: the library saved them to
    --checkpoint already; without one they go to the default checkpoint in the current folder."""
    if exc.save is None:
        return cli_message(exc)
    from ..checkpoint import interrupted_saved, interrupted_unsaved

    path = default_checkpoint_path(exc.model or "model")
    try:
        exc.save(path)
    except (SuiError, OSError) as err:
        return cli_message(SuiError(interrupted_unsaved(exc.tokens, err)))
    return cli_message(SuiError(interrupted_saved(exc.tokens, path)))


def _one_line_warnings(debug: bool) -> Callable[[], None]:
    """Python warnings (sui-onnx's own and its libraries') as one ``sui-onnx: warning:`` line
    each, without the source file and line that Python prints; --debug keeps Python's format.
    Returns the undo."""
    import warnings

    if debug:
        return lambda: None
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
        _say(f"warning: {first_line(message if isinstance(message, BaseException) else Warning(message))}")

    warnings.showwarning = show

    def restore() -> None:
        warnings.showwarning = previous

    return restore


def _interrupt_on_sigterm() -> Callable[[], None]:
    """SIGTERM, like SIGINT, raises KeyboardInterrupt in every phase of a command (during a
    calibration run the StopOnSignal that analysis_options passes installs its own handlers, which
    stop at a batch boundary; an interrupted run without --checkpoint is saved to the default
    checkpoint by interrupted_message), so that temporary files are removed
    and the exit code is 130 instead of a kill by signal. Returns the undo."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no SIGTERM
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, old)


def main(argv: Sequence[str] | None = None) -> int:
    # OpenBLAS worker threads busy-wait after each BLAS call; between our per-batch X^T X and the next
    # onnxruntime run they would steal the cores from onnxruntime (measured: +30% inference time on
    # 2 cores). A short timeout lets them sleep. Read when numpy loads, which the commands do after
    # this line (nothing above imports it); a value the user set is kept.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit:  # argparse's own exits (usage errors: 2, --help and --version: 0)
        raise
    except KeyboardInterrupt:  # Ctrl-C while the parser (and what it imports) loads
        _say("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - an argument type that raised something unexpected
        if debug:
            traceback.print_exc()
        _say(f"error: {exc.__class__.__name__}: {exc}")
        return EXIT_ERROR
    if args.command is None:
        parser.print_help()
        return EXIT_ERROR
    debug = args.debug or getattr(args, "sub_debug", False)
    if debug:  # onnxruntime's own log goes to stderr only then (runner.session_options)
        os.environ["SUI_ONNX_DEBUG"] = "1"
    restore_signals, restore_warnings = _interrupt_on_sigterm(), _one_line_warnings(debug)
    try:
        from ..stopping import Interrupted

        try:
            return int(args.run(args) or EXIT_OK)
        except Interrupted as exc:
            _say(interrupted_message(exc))
            return EXIT_INTERRUPTED
        except SuiError as exc:
            if debug:
                traceback.print_exc()
            _say(f"error: {cli_message(exc, args.command)}")
            return EXIT_ERROR
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except MemoryError:
        if debug:
            traceback.print_exc()
        _say("error: out of memory (lower --batch-size or --seq-len, or pass --max-memory)")
        return EXIT_ERROR
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - last line of defence (a Rust panic is a BaseException)
        if debug:
            traceback.print_exc()
        first = first_line(exc, fallback="")
        _say(f"error: unexpected {exc.__class__.__name__}: {first[:300]} (rerun with --debug)")
        return EXIT_ERROR
    finally:
        restore_warnings()
        restore_signals()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
