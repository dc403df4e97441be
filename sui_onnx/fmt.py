"""Number formatting shared by the gate's messages and the renderers (a leaf: imports nothing of sui_onnx)."""

from __future__ import annotations

import math


def fmt_value(value: float | None) -> str:
    """A gate value as the messages show it: 4 significant digits, "n/a" for None, "inf"."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.4g}"


def fmt_width(value: float) -> str:
    """A fitted width (the saturation D*): whole numbers with thousands separators from 10 up,
    three significant digits below (0.752, not a rounded 1)."""
    return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.3g}"
