"""The list of subcommands, in the order `sui-onnx --help` shows them."""

from __future__ import annotations

from . import check, eval, merge, report, scaling, taps
from . import export

REGISTRY = [report.register, eval.register, check.register, taps.register, merge.register, scaling.register, export.register]
