"""Renderings of a Report: rich terminal renderables and markdown. The report object knows nothing
of the terminal; these small functions read it and nothing else."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
from .safeio import markup as escape, printable
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .report import Report

_STATUS_STYLE = {"ok": "green", "low_tokens": "yellow", "rank_capped": "yellow", "degenerate": "red", "non_finite": "red"}
_BAR_CELLS = 8
_BLOCKS = " ▏▎▍▌▋▊▉█"


def bar(fraction: float | None, cells: int = _BAR_CELLS) -> str:
    """A unicode bar of `cells` characters filled to `fraction` (eighth-cell resolution)."""
    if fraction is None:
        return " " * cells
    eighths = round(max(0.0, min(1.0, fraction)) * cells * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (_BLOCKS[part] if part else "")).ljust(cells)


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def header(report: Report) -> Panel:
    m, c, r = report.model, report.calibration, report.runtime
    lines = [
        f"[bold]model[/]  {escape(str(m.get('path')))}  [dim]sha256 {str(m.get('sha256', ''))[:12]} · opset {m.get('opset')}[/]",
        f"[bold]calib[/]  {c.get('tokens', 0):,} tokens · seq {c.get('seq_len', '-')} · "
        + ", ".join(escape(s.get("path", "?")) for s in c.get("sources", [])),
        f"[bold]run[/]    {escape(r.get('device', '-'))} ({escape(', '.join(r.get('providers', [])) or '-')}) · "
        f"{r.get('elapsed_s', 0):.1f} s · {r.get('tokens_per_s', 0) or 0:,.0f} tok/s · site {escape(report.settings.get('site'))}",
    ]
    if m.get("encoder"):
        lines.insert(1, f"[bold]enc[/]    {escape(m['encoder'].get('path'))}  [dim]sha256 {str(m['encoder'].get('sha256', ''))[:12]}[/]")
    if (r.get("passes") or 1) > 1:
        why = ("statistics over half the free memory" if r.get("max_memory_source") == "auto"
               else "--max-memory")
        cap = r.get("max_memory")
        lines.append(f"[yellow]{r['passes']} passes over the calibration data ({why}"
                     + (f": {_size(cap)} cap" if cap else "") + ")[/]")
    unused = [escape(str(x.get("path"))) for x in c.get("sources", []) if x.get("tokens") == 0]
    if unused:
        lines.append(f"[yellow]no tokens from {', '.join(unused)}: the budget was spent on the sources before it "
                     "(--mix even gives each source an equal share)[/]")
    if m.get("dequantized_from"):
        lines.append(f"[yellow]weights dequantized from {escape(m['dequantized_from'])}[/]")
    return Panel("\n".join(lines), title="sui-onnx report", title_align="left", box=box.ROUNDED)


def layer_table(report: Report) -> Table:
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    t.add_column("layer", justify="right")
    t.add_column("D", justify="right")
    t.add_column("hard", justify="right")
    t.add_column("soft", justify="right")
    t.add_column("SC", justify="right")
    t.add_column("SUI", justify="right")
    t.add_column("", no_wrap=True)
    t.add_column("k95", justify="right")
    t.add_column("status", no_wrap=True)
    for layer in report.layers:
        style = _STATUS_STYLE.get(layer.status, "")
        t.add_row(
            str(layer.layer),
            str(layer.width),
            _fmt(layer.hard_rank),
            _fmt(layer.soft_rank),
            _fmt(layer.concentration, ".2f"),
            _fmt(layer.sui, ".3f"),
            Text(bar(layer.sui), style="cyan"),
            _fmt(layer.energy_widths.get("k95"), "d"),
            Text(printable(layer.status), style=style),
        )
    s = report.summary
    if s.get("sui"):
        t.add_section()
        t.add_row(
            "median", "", _fmt(s["hard_rank"]["median"]), _fmt(s["soft_rank"]["median"]),
            _fmt(s["concentration"]["median"], ".2f"), _fmt(s["sui"]["median"], ".3f"),
            Text(bar(s["sui"]["median"]), style="bold cyan"), "", "",
        )
    return t


def advice_panel(report: Report) -> Panel:
    a = report.advice
    if not a or a.get("recommended_width") is None:
        return Panel("no usable layer: no width advice", title="width advice", title_align="left")
    if a.get("measured"):
        return measured_panel(report)
    counted = "every layer" if a.get("quantile", 1.0) >= 1.0 else f"the {a['quantile']:.0%} quantile of layers"
    lines = [
        f"k{round(100 * a['q'])} needs {a.get('needed_width', a['recommended_width'])} of {a['current_width']} "
        f"neurons ({counted}; {a['recommended_width']} rounded to a multiple of {a.get('align', 64)}), "
        f"worst layer loses {a['max_variance_lost']:.2%} of its variance",
        "[yellow]a compressibility estimate, not a deployable width: a narrower FFN without retraining "
        "costs more than the variance it drops[/]",
        "measure it: [bold]--eval HELDOUT[/] · build it: [bold]sui-onnx slim MODEL OUT --eval HELDOUT[/]",
    ]
    return Panel("\n".join(lines), title="width advice (estimate)", title_align="left", box=box.ROUNDED)


def measured_panel(report: Report) -> Panel:
    """The measured ladder: dCE of the projection (what the spectrum allows) and of slim (a
    narrower FFN without retraining), worst over the eval sources, and the recommendation."""
    m = report.advice["measured"]
    current = report.advice["current_width"]
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    for name, justify in (("width", "left"), ("", "right"), ("FFN saved", "right"), ("dCE projection", "right"),
                          ("dCE slim", "right"), ("top-1 slim", "right")):
        t.add_column(name, justify=justify, no_wrap=True)
    for row in m["ladder"]:
        widths = row["widths"]
        w = str(widths[0]) if len(set(widths)) == 1 else f"{min(widths)}..{max(widths)}"
        slim_ok = row["slim"]["worst_delta_ce"] is not None and row["slim"]["worst_delta_ce"] <= m["max_loss_increase"]
        top1 = [s["top1"] for s in row["slim"]["sources"] if s.get("top1") is not None]
        t.add_row(row["label"], w, f"{row['ffn_param_saving']:.0%}", _delta(row["projection"]["worst_delta_ce"]),
                  Text(_delta(row["slim"]["worst_delta_ce"]), style="green" if slim_ok else "red"),
                  f"{100 * min(top1):.1f}%" if top1 else "-")
    names = ", ".join(str(s.get("path", "?")).rsplit("/", 1)[-1] for s in m.get("eval", []))
    if m.get("recommended_width") is not None:
        head = (f"recommended FFN width [bold]{m['recommended_width']}[/] of {current} ({m['recommended_label']}): "
                f"measured dCE within {m['max_loss_increase']} nats/token on {names}; saves "
                f"{m['ffn_param_saving']:.0%} of FFN parameters")
    else:
        head = (f"no measured width keeps dCE within {m['max_loss_increase']} nats/token on {names}: keep {current} "
                "(or allow more with --max-loss-increase)")
    notes = [Text.from_markup(head), t,
             Text("dCE: held-out cross-entropy increase in nats/token, worst eval source; projection = the top "
                  "principal directions only (full width, saves nothing); slim = the narrower FFN "
                  "`sui-onnx slim` writes", style="dim")]
    notes += [Text(f"warning: {w}", style="yellow") for w in m.get("warnings", [])]
    return Panel(Group(*notes), title="width advice (measured)", title_align="left", box=box.ROUNDED)


def _delta(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def flags_note(report: Report) -> Text | None:
    notes = [f"layer {x.layer}: {printable(x.message)}" for x in report.layers if x.message]
    if not notes:
        return None
    if len(notes) > 4:
        notes = notes[:3] + [f"... and {len(notes) - 3} more layers flagged"]
    return Text("\n".join(notes), style="yellow")


def report_renderable(report: Report) -> Group:
    parts: list[Any] = [header(report), layer_table(report)]
    note = flags_note(report)
    if note is not None:
        parts.append(note)
    parts.append(advice_panel(report))
    return Group(*parts)


def _md_code(text: Any) -> str:
    """User text for inline markdown code: printable, and no backtick to end the span early."""
    return printable(text).replace("`", "'")


def to_markdown(report: Report) -> str:
    """A compact markdown summary for PR comments."""
    m, c, s, a = report.model, report.calibration, report.summary, report.advice
    out = [
        "## sui-onnx report",
        "",
        f"Model `{_md_code(m.get('path'))}` (sha256 `{str(m.get('sha256', ''))[:12]}`), "
        f"{c.get('tokens', 0):,} calibration tokens, site `{report.settings.get('site')}`.",
        "",
    ]
    if s.get("sui"):
        out += [
            f"**Median SUI {s['sui']['median']:.3f}** · hard rank {s['hard_rank']['median']:.1f} · "
            f"soft rank {s['soft_rank']['median']:.1f} · concentration {s['concentration']['median']:.2f}",
            "",
        ]
    out += [
        "| layer | D | tokens | hard rank | soft rank | hard util | soft util | SC | SUI | k90 | k95 | k99 | status |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:--|",
    ]
    for x in report.layers:
        e = x.energy_widths
        out.append(
            f"| {x.layer} | {x.width} | {x.tokens} | {_fmt(x.hard_rank, '.2f')} | {_fmt(x.soft_rank, '.2f')} | "
            f"{_fmt(x.hard_util, '.3f')} | {_fmt(x.soft_util, '.3f')} | {_fmt(x.concentration, '.3f')} | "
            f"{_fmt(x.sui, '.3f')} | {_fmt(e.get('k90'), 'd')} | {_fmt(e.get('k95'), 'd')} | "
            f"{_fmt(e.get('k99'), 'd')} | {x.status} |"
        )
    if a and a.get("measured"):
        m = a["measured"]
        rec = (f"**{m['recommended_width']}** of {a['current_width']} ({m['recommended_label']}, saves "
               f"{m['ffn_param_saving']:.0%} of FFN parameters)" if m.get("recommended_width") is not None
               else f"keep {a['current_width']} (no measured width within the limit)")
        out += ["", f"**Width advice** (measured, dCE <= {m['max_loss_increase']} nats/token on every eval source): {rec}.",
                "", "| width | FFN saved | dCE projection | dCE slim |", "|:--|---:|---:|---:|"]
        for row in m["ladder"]:
            out.append(f"| {row['label']} ({max(row['widths'])}) | {row['ffn_param_saving']:.0%} | "
                       f"{_delta(row['projection']['worst_delta_ce'])} | {_delta(row['slim']['worst_delta_ce'])} |")
    elif a and a.get("recommended_width") is not None:
        out += [
            "",
            f"**Width estimate** (unmeasured): k{round(100 * a['q'])} needs {a.get('needed_width', a['recommended_width'])} "
            f"of {a['current_width']} neurons ({a['recommended_width']} aligned; worst layer loses "
            f"{a['max_variance_lost']:.2%} of variance). A compressibility estimate, not a deployable width: measure "
            "it with `sui-onnx report --eval HELDOUT` or `sui-onnx slim --eval HELDOUT`. Assumptions: "
            + "; ".join(a.get("assumptions", [])) + ".",
        ]
    out.append("")
    return "\n".join(out)
