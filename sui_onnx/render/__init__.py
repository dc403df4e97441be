"""Terminal and markdown renderings over the result objects; the objects know nothing of the
terminal (their ``__rich__`` calls in here, so ``console.print(result)`` works):

- ``report``: a ``Report`` (header, layer table, legend, width advice, next steps) and its markdown;
- ``check``: a gate ``GateResult`` (the pass/fail table of ``sui-onnx check``);
- ``scaling``: a ``ScalingResult`` (per width, the fits, per layer, per seed).
"""

from __future__ import annotations

from ..ladder import counted_text
from .report import (TYPICAL, advice_panel, bar, command_path, flags_note, header, layer_table, legend, legend_lines,
                     measured_panel, next_steps, next_text, report_renderable, seq_text, short_path, to_markdown,
                     unfilled_budget)

__all__ = [
    "TYPICAL", "advice_panel", "bar", "check_renderable", "command_path", "counted_text", "flags_note", "header",
    "layer_table", "legend", "legend_lines", "measured_panel", "next_steps", "next_text", "report_renderable",
    "scaling_renderable", "scaling_renderables", "seq_text", "short_path", "to_markdown", "unfilled_budget",
]


def __getattr__(name: str):  # the check and scaling renderers import their result modules only when asked
    if name == "check_renderable":
        from .check import check_renderable

        return check_renderable
    if name in ("scaling_renderable", "scaling_renderables"):
        from . import scaling

        return getattr(scaling, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
