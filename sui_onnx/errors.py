"""User-facing errors: the CLI prints their message as one line and exits 2."""


class SuiError(Exception):
    """An input, usage or configuration problem the user can fix (exit code 2)."""


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
