"""User-facing errors: the CLI prints their message as one line and exits 2.

A message that names one of the library's options writes it as `name` (:func:`option`), the
keyword of :class:`~sui_onnx.calib.CalibrationSpec` or :class:`~sui_onnx.config.AnalysisOptions`
(``seq_len``, ``max_memory``, ...); :attr:`SuiError.options` lists them and the CLI shows each as
its flag (``--seq-len``), so the library never names command-line flags itself.
"""

from __future__ import annotations

import re

OPTION_PATTERN = re.compile(r"`([a-z][a-z0-9_]*)`")  # `seq_len` in a message: the option seq_len


def option(name: str) -> str:
    """How a message names the library option ``name``: `name` (the CLI shows its flag there)."""
    return f"`{name}`"


class SuiError(Exception):
    """An input, usage or configuration problem the user can fix (exit code 2)."""

    @property
    def options(self) -> tuple[str, ...]:
        """The library options the message names, in order, each once."""
        return tuple(dict.fromkeys(OPTION_PATTERN.findall(str(self))))


class ModelError(SuiError):
    """The ONNX model cannot be loaded, is unsafe, or has no FFN block we can tap."""


class CalibrationError(SuiError):
    """Calibration data cannot be read, tokenized or fed."""


class ConfigError(SuiError):
    """A configuration file or flag value is malformed."""


class NumericalError(SuiError):
    """Activations or statistics contain NaN/Inf."""


def first_line(exc: BaseException, limit: int | None = None, fallback: str | None = None) -> str:
    """The first line of ``exc``'s message (surrounding whitespace stripped), cut to ``limit``
    characters; ``fallback`` (default: the exception's class name) when the message is empty.
    Never raises, whatever the exception's ``__str__`` does."""
    try:
        text = str(exc).strip()
    except Exception:  # noqa: BLE001 - a broken __str__ must not replace the error being reported
        text = ""
    lines = text.splitlines()
    first = lines[0] if lines else (exc.__class__.__name__ if fallback is None else fallback)
    return first if limit is None else first[:limit]
