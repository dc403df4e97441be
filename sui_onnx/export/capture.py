"""Where the exporters' output goes, offline mode, and the one-line failure message.

:func:`capture_output` is the one place that redirects process-wide output while exporting (file
descriptors 1 and 2 through :func:`sui_onnx.safeio.redirected_fds`, ``sys.stdout``/``sys.stderr``
and the logging handlers' streams), so that torch, transformers and optimum write into the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Iterator

from ..errors import SuiError, first_line
from ..safeio import redirected_fds


@contextlib.contextmanager
def capture_output(log: Path) -> Iterator[None]:
    """Send everything printed or logged while exporting to ``log`` (appending): file
    descriptors 1 and 2 (C++ warnings), sys.stdout/sys.stderr (prints, warnings, tqdm), and
    the streams of the logging handlers already installed (transformers has its own)."""
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    with open(log, "a", buffering=1, encoding="utf-8", errors="replace") as fh, redirected_fds(fh.fileno(), (1, 2)):
        handlers: list[tuple[logging.StreamHandler, Any]] = []
        opt_logger = logging.getLogger("optimum")
        old_level = opt_logger.level
        own_handler = logging.StreamHandler(fh)
        own_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        added = False
        try:
            loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                               if isinstance(lg, logging.Logger)]
            seen: set[int] = set()      # a handler may sit on several loggers: swap it once
            for lg in loggers:
                for h in lg.handlers:
                    if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) \
                            and id(h) not in seen:
                        seen.add(id(h))
                        handlers.append((h, h.stream))
                        _swap_stream(h, fh)
            if not opt_logger.handlers:         # optimum may have installed its own (swapped above)
                opt_logger.addHandler(own_handler)
                added = True
            opt_logger.setLevel(logging.INFO)
            with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                yield
        finally:
            if added:
                opt_logger.removeHandler(own_handler)
            opt_logger.setLevel(old_level)
            for h, stream in reversed(handlers):
                _swap_stream(h, stream)
            with contextlib.suppress(Exception):
                fh.flush()


def _swap_stream(handler: logging.StreamHandler, stream: Any) -> None:
    """``handler.setStream`` without its flush of the old stream (which may be closed)."""
    handler.acquire()
    try:
        with contextlib.suppress(Exception):
            handler.stream.flush()
        handler.stream = stream
    finally:
        handler.release()


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE for the duration (also when already imported)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old_env = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ[k] = "1"
    patched = []
    for mod, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("transformers.utils.hub", "_is_offline_mode")):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, attr):
            patched.append((m, attr, getattr(m, attr)))
            setattr(m, attr, True)
    try:
        yield
    finally:
        for m, attr, value in patched:
            setattr(m, attr, value)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def note(log: Path, line: str) -> None:
    """Append one line to the export log."""
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def log_dedupe(log: Path, n: int) -> None:
    """Record in the log that ``n`` tied-embedding duplicates were replaced (nothing when 0)."""
    if n:
        note(log, f"sui-onnx: replaced {n} transposed duplicate initializer(s) (tied embeddings) by Transpose nodes")


def failure(what: str, exc: BaseException, log: Path, hint: str = "") -> SuiError:
    """The one-line error for a failed exporter step; its traceback goes to ``log``."""
    first = first_line(exc, fallback="")
    if len(first) > 300:
        first = first[:297] + "..."
    with contextlib.suppress(OSError), open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n{what} failed:\n")
        fh.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return SuiError(f"{what} failed: {exc.__class__.__name__}: {first}{hint} (full log: {log})")
