"""The list of subcommands, in the order `sui-onnx --help` shows them."""

from __future__ import annotations

from . import check, merge, report, scaling, taps
from . import export

REGISTRY = [report.register, check.register, taps.register, merge.register, scaling.register, export.register]
