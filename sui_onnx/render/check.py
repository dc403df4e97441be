"""The gate result in the terminal: the pass/fail table of ``sui-onnx check`` (``GateResult.__rich__``)."""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from typing import TYPE_CHECKING

from ..fmt import fmt_value
from ..safeio import markup, printable

if TYPE_CHECKING:  # the gate imports this module (GateResult.__rich__), never the other way round
    from ..gate.evaluate import Check, GateResult


def _value(v, relative: bool = False) -> str:
    if relative and v is not None and v == v and abs(v) != float("inf"):
        return f"{v:.2%}"
    return fmt_value(v)


def _detail(c: Check) -> str:
    """What the value and limit columns do not already say, briefly."""
    if c.baseline is not None or c.current is not None:
        return f"{_value(c.baseline)} -> {_value(c.current)}"
    return c.basis


def check_renderable(result: GateResult) -> Group:
    """The pass/fail table: every model-level check, every failing or warning layer check, and one
    row per rule for the layers that passed (with the one closest to its limit); then the notes of
    layers with a bad status. Rule ids are shown without their "sui-onnx/" prefix; the verdict line
    names the breached ones in full."""
    table = Table(title=f"sui-onnx check: {markup(result.target)}", title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
    table.add_column("", no_wrap=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("scope", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("limit", justify="right", no_wrap=True)
    table.add_column("detail", overflow="fold", min_width=13)
    marks = {"error": Text("FAIL", style="bold red"), "warning": Text("WARN", style="yellow"),
             "none": Text("pass", style="green")}
    notes = []
    for rule_id, checks in result.by_rule():
        name = rule_id.removeprefix("sui-onnx/")
        rel = "-rel-" in rule_id
        layer_pass = [c for c in checks if c.layer is not None and c.level == "none"]
        for c in checks:
            if c.layer is None or c.level != "none":
                if c.rule_id == "sui-onnx/layer-status":
                    value, limit, detail = "", "", c.message.split("status ", 1)[-1].split(" ")[0]
                    notes.append(c.message)
                else:
                    value, limit = _value(c.value, rel), f"{c.comparator} {_value(c.limit, rel)}"
                    detail = _detail(c)
                    if c.value is None:
                        notes.append(c.message)
                table.add_row(marks[c.level], markup(name), markup(c.scope_label), value, limit, markup(detail))
        if layer_pass:
            w = result.closest(layer_pass)
            others = len(layer_pass) < sum(1 for c in checks if c.layer is not None)
            scope = f"{len(layer_pass)} {'other ' if others else ''}layers"
            if w is None:
                table.add_row(marks["none"], markup(name), scope, "", "", "ok")
            else:
                table.add_row(marks["none"], markup(name), scope, _value(w.value, rel),
                              f"{w.comparator} {_value(w.limit, rel)}", f"worst {markup(w.scope_label)}")
    n, nf, nw = len(result.checks), len(result.failures), len(result.warnings)
    warn = f", {nw} warning{'s' if nw != 1 else ''}" if nw else ""
    if result.passed:
        verdict = Text(f"PASS: {n} check{'s' if n != 1 else ''} passed{warn}", style="bold green")
    else:
        breached = ", ".join(dict.fromkeys(c.rule_id for c in result.failures))
        verdict = Text(f"FAIL: {nf} of {n} checks breached ({printable(breached)}){warn}", style="bold red")
    return Group(table, *[Text(f"note: {printable(m)}", style="yellow") for m in notes], verdict)
