"""The list of subcommands, in the order `sui-onnx --help` shows them."""

from __future__ import annotations

from . import merge, report, taps

REGISTRY = [report.register, taps.register, merge.register]
