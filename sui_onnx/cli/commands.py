"""The list of subcommands, in the order `sui-onnx --help` shows them."""

from __future__ import annotations

from . import check, eval, merge, report, scaling, slim, taps
from . import export

REGISTRY = [report.register, eval.register, slim.register, check.register, taps.register, merge.register, scaling.register, export.register]
