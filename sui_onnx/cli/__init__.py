"""Command-line interface: the only module that parses arguments, prints, and picks exit codes.

Exit codes (every command, every output format): 0 success; 1 a gate threshold was breached;
2 usage, input or configuration error (one line on stderr; --debug shows the traceback);
130 interrupted by SIGINT/SIGTERM (a checkpoint was saved; --resume continues).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .._version import __version__
from ..errors import SuiError

EXIT_OK, EXIT_BREACH, EXIT_ERROR = 0, 1, 2
EXIT_INTERRUPTED = 130  # SIGINT/SIGTERM during a run: a checkpoint was saved, nothing half-written


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line on usage errors (its default prints usage too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sui-onnx",
        description=(
            "How much of its FFN width does your model use? Finds the feed-forward blocks of an "
            "ONNX transformer, runs calibration text through onnxruntime and reports hard rank, "
            "soft rank, spectral concentration and the Spectral Utilization Index per layer."
        ),
        epilog="Exit codes: 0 success, 1 a gate threshold was breached, 2 usage/input/config error.",
    )
    parser.add_argument("--version", action="version", version=f"sui-onnx {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for register in _commands():
        register(sub)
    return parser


def _commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Each command module registers its subparser; imports stay light (no onnxruntime here)."""
    from . import commands

    return commands.REGISTRY


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_ERROR
    debug = args.debug or getattr(args, "sub_debug", False)
    from ..analyze import Interrupted

    try:
        return int(args.run(args) or EXIT_OK)
    except Interrupted as exc:
        print(f"sui-onnx: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SuiError as exc:
        if debug:
            raise
        print(f"sui-onnx: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("sui-onnx: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, never a traceback
        if debug:
            raise
        print(f"sui-onnx: error: unexpected {exc.__class__.__name__}: {exc} (rerun with --debug)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
