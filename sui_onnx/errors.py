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
