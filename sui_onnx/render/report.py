"""Renderings of a Report: rich terminal renderables and markdown. The report object knows nothing
of the terminal; these small functions read it and nothing else."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..ladder import RUNG_RATIOS, aligned, code_spans, estimate_view, listing as _list, measured_view, sentence, withheld_note
from ..layout import MODEL_FILE
from ..safeio import markup as escape, printable

if TYPE_CHECKING:  # report imports this module (Report.__rich__), never the other way round
    from ..report import CalibrationInfo, Report

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # sui_onnx/
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


def short_path(path: Any, cwd: str | None = None) -> str:
    """A path as a reader wants it in a report: relative to the working folder when it lies under it,
    ``<bundled>/...`` for the package's own data, else as given (absolute when it was)."""
    text = str(path)
    if not text or text.startswith("<") or "://" in text:
        return text
    here = os.path.abspath(cwd or os.getcwd())
    full = os.path.abspath(text)
    bundled = os.path.abspath(os.path.join(_PACKAGE, "data"))
    for root, prefix in ((here, ""), (bundled, "<bundled>/")):
        try:
            if os.path.commonpath([full, root]) == root and full != root:
                return prefix + os.path.relpath(full, root)
        except ValueError:  # another drive (Windows)
            continue
    return text


def seq_text(c: CalibrationInfo) -> str:
    """The window length(s) of the calibration, in words: "seq 128", "seq 128 (text), 64 (rows of ids)"."""
    """The window length: --seq-len for text, the row length of each .npy source."""
    sources = c.sources or []
    rows = sorted({s.seq_len for s in sources if s.kind == "npy" and isinstance(s.seq_len, int)})
    text = any(s.kind != "npy" for s in sources)
    parts = []
    if text and c.seq_len:
        parts.append(f"{c.seq_len}" + (" (text)" if rows else ""))
    if rows:
        parts.append("/".join(map(str, rows)) + " (rows of ids)")
    if not parts and c.seq_len and not sources:
        parts.append(str(c.seq_len))
    return f"seq {', '.join(parts)}" if parts else ""


def _taps(report: Report) -> str:
    if report.settings.taps == "explicit":
        return "taps named with --tap"
    return f"site {escape(report.settings.site)}"


def header(report: Report) -> Panel:
    m, c, r = report.model, report.calibration, report.runtime
    path = escape(short_path(m.path))
    ident = f"sha256 {str(m.sha256 if m.sha256 is not None else '')[:12]} · opset {m.opset}"
    lines = [f"[bold]model[/]  {path}" + ("\n       " if len(path) + len(ident) > 66 else "  ") + f"[dim]{ident}[/]"]
    calib = [f"{c.tokens or 0:,} tokens"]
    if seq_text(c):
        calib.append(seq_text(c))
    sources = ", ".join(escape(short_path(x.path if x.path is not None else "?")) for x in c.sources or [])
    if c.from_stats:
        sources = sources or f"statistics {escape(short_path(c.from_stats))}"
    if sources:
        calib.append(sources)
    lines.append("[bold]calib[/]  " + " · ".join(calib))
    if r.device == "none":  # --stats: no calibration ran here
        source = r.source if r.source is not None else c.from_stats if c.from_stats is not None else "?"
        lines.append(f"[bold]run[/]    from saved statistics {escape(short_path(source))} "
                     f"(no calibration run) · {_taps(report)}")
    else:
        lines.append(f"[bold]run[/]    {escape(r.device if r.device is not None else '-')} "
                     f"({escape(', '.join(r.providers or []) or '-')}) · "
                     f"{r.elapsed_s or 0:.1f} s · {r.tokens_per_s or 0:,.0f} tok/s · {_taps(report)}")
    if m.encoder:
        enc = m.encoder
        lines.insert(1, f"[bold]enc[/]    {escape(short_path(enc.path))}  "
                        f"[dim]sha256 {str(enc.sha256 if enc.sha256 is not None else '')[:12]}[/]")
    if (r.passes or 1) > 1:
        why = ("statistics over half the free memory" if r.max_memory_source == "auto"
               else "--max-memory")
        cap = r.max_memory
        lines.append(f"[yellow]{r.passes} passes over the calibration data ({why}"
                     + (f": {_size(cap)} cap" if cap else "") + ")[/]")
    unfilled = unfilled_budget(report)
    if unfilled:
        lines.append(f"[yellow]{escape(unfilled)}[/]")
    unused = unused_sources(report)
    if unused:
        lines.append(f"[yellow]{escape(unused)}[/]")
    thin = thin_data(report)
    if thin:
        lines.append(f"[red]{escape(thin)}[/]")
    if m.dequantized_from:
        lines.append(f"[yellow]weights dequantized from {escape(m.dequantized_from)}[/]")
    return Panel("\n".join(lines), title="sui-onnx report", title_align="left", box=box.ROUNDED)


def quiet_warnings(report: Report) -> list[str]:
    """What the terminal report would have warned about, for --quiet runs (which print it on stderr):
    sources that gave no tokens, thin data, and the measured advice's warnings. (A budget the sources
    could not fill is always on stderr already.)"""
    out = [x for x in (unused_sources(report), thin_data(report, hint=True)) if x]
    if report.advice.measured:
        out += list(report.advice.measured.warnings or [])
    return out


def unused_sources(report: Report) -> str | None:
    """Calibration sources the budget never reached (plain text), or None."""
    unused = [printable(short_path(x.path)) for x in report.calibration.sources or [] if x.tokens == 0]
    if not unused:
        return None
    return (f"no tokens from {', '.join(unused)}: the budget was spent on the sources before it "
            "(--mix even gives each source an equal share)")


def thin_data(report: Report, hint: bool = False) -> str | None:
    """Too few calibration tokens for the widths (plain text; ``hint``: with the budget to pass), or None."""
    withheld = report.advice.withheld
    if not withheld:
        return None
    return (f"thin data: {withheld.tokens:,} tokens < 4·D = {withheld.min_tokens:,}: metrics biased low (flagged), "
            "width advice withheld" + (f"; pass --tokens >= {withheld.recommended_tokens or 0:,}" if hint else ""))


def unfilled_budget(report: Report) -> str | None:
    """A token budget the calibration sources could not fill: the tokens actually used, or None."""
    c = report.calibration
    tokens, budget = c.tokens, c.token_budget
    if isinstance(tokens, int) and isinstance(budget, int) and 0 <= tokens < budget and not c.from_stats:
        return (f"the sources hold fewer tokens than the budget of {budget:,}: {tokens:,} tokens used "
                "(add --calib sources or lower --tokens)")
    return None


def layer_table(report: Report) -> Table:
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold", collapse_padding=True)
    routed = any(x.group is not None for x in report.layers)  # experts: each sees its share of the tokens
    t.add_column("layer", justify="right")
    t.add_column("D", justify="right")
    if routed:
        t.add_column("tokens", justify="right")
    t.add_column("hard", justify="right")
    t.add_column("soft", justify="right")
    t.add_column("SC", justify="right")
    t.add_column("SUI", justify="right")
    t.add_column("", no_wrap=True)
    keys = report.settings.energy_keys()
    for key in keys:
        t.add_column(key, justify="right")
    t.add_column("status", no_wrap=True)
    for layer in report.layers:
        style = _STATUS_STYLE.get(layer.status, "")
        e = layer.energy_widths
        t.add_row(
            str(layer.layer),
            str(layer.width),
            *([f"{layer.tokens:,}"] if routed else []),
            _fmt(layer.hard_rank),
            _fmt(layer.soft_rank),
            _fmt(layer.concentration, ".2f"),
            _fmt(layer.sui, ".3f"),
            Text(bar(layer.sui), style="cyan"),
            *[_fmt(e.get(key), "d") for key in keys],
            Text(printable(layer.status), style=style),
        )
    s = report.summary
    if s.sui:
        t.add_section()
        t.add_row(
            "median", "", *([""] if routed else []), _fmt(s.median("hard_rank")), _fmt(s.median("soft_rank")),
            _fmt(s.median("concentration"), ".2f"), _fmt(s.median("sui"), ".3f"),
            Text(bar(s.median("sui")), style="bold cyan"), *[""] * len(keys), "",
        )
    return t


# the measures' ranges seen in the shipped reports (the demo, Gemma-3-270M, 20 scaling reports;
# README "CI gate"): a hint of what a value means, never a pass mark
TYPICAL = "typical of the trained models measured here: SUI 0.01-0.3, SC 0.6-1.0"


def legend_lines(report: Report) -> list[tuple[str, str]]:
    """(column, meaning) per measure of the layer table: its range and which way is more of the width used."""
    f = report.settings.top_fraction if report.settings.top_fraction is not None else 0.1
    keys = report.settings.energy_keys()
    shares = "/".join(f"{100 * q:g}" for q in report.settings.levels())
    return [
        ("hard", "hard rank (participation ratio), 1..D; higher = more of the width used"),
        ("soft", "soft rank (Shannon effective rank), 1..D; higher = more of the width used"),
        ("SC", f"variance share of the top {f:.0%} directions, 0..1; lower = more width used"),
        ("SUI", "utilization index (the bar), 0..1, 1 = flat spectrum; higher = more used"),
        (f"{keys[0]}..", f"directions keeping {shares}% of the variance: width a rank-k FFN needs"),
    ]


def legend(report: Report) -> Text:
    out = Text(style="dim")
    for i, (name, meaning) in enumerate(legend_lines(report)):
        out.append(("\n" if i else "") + f"{name:<6}{meaning}")
    out.append(f"\n{'':<6}{TYPICAL}")
    return out


def _span(layers: list[int]) -> str:
    """0-3 for consecutive layers, else a short list."""
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return _list(layers)


def _plain(text: str) -> str:
    """A view's note for the terminal: rich markup escaped, the `code` marks dropped."""
    return escape("".join(part for part, _ in code_spans(text)))


def advice_panel(report: Report) -> Panel:
    if report.advice.measured:
        return measured_panel(report)
    view = estimate_view(report)
    before, width, after = view.headline
    if view.kind == "withheld":
        lines = [f"[red]{escape(before + after)}[/]", *map(_plain, view.notes)]
        return Panel("\n".join(lines), title="width advice (withheld)", title_align="left", box=box.ROUNDED)
    if view.kind == "none":
        return Panel(escape(before), title="width advice", title_align="left")
    *notes, caveat = view.notes
    lines = [escape(before) + f"[bold]{escape(width)}[/]" + escape(after), *map(_plain, notes), f"[yellow]{_plain(caveat)}[/]"]
    return Panel("\n".join(lines), title="width advice (estimate)", title_align="left", box=box.ROUNDED)


def measured_panel(report: Report) -> Panel:
    """The measured ladder (sui_onnx.ladder): dCE of the projection (what the spectrum allows) and of
    slim (a narrower FFN without retraining), worst over the eval sources, and the recommendation;
    for an encoder (no logits) the hidden states' cosine and relative error against the original."""
    view = measured_view(report)
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    for i, name in enumerate(view.columns):  # the rung's label wraps ("D/8 = D/4 = k95 estimate"); numbers never do
        if i == 0:
            t.add_column(name, justify="left", overflow="fold", max_width=16)
        else:
            t.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    for row in view.rows:
        t.add_row(*(Text(c.text if c.text is not None else "-", style={"pass": "green", "fail": "red"}.get(c.status, ""))
                    for c in row))
    before, width, after = view.headline
    head = escape(before) + (f"[bold]{escape(width)}[/]" if width else "") + escape(after)
    notes = [Text.from_markup(head), t, Text(view.legend, style="dim")]
    notes += [Text(f"warning: {w}", style="yellow") for w in view.warnings]
    return Panel(Group(*notes), title="width advice (measured)", title_align="left", box=box.ROUNDED)


def command_path(path: Any) -> str:
    """The model as a next-step command names it: its path relative to the working folder (or as
    given) when short, else MODEL."""
    text = short_path(path)
    if text.startswith("<bundled>/"):
        text = str(path)
    if os.path.basename(text) == MODEL_FILE and os.path.dirname(text):
        text = os.path.dirname(text)  # the folder holding model.onnx names the same model, shorter
    return text if text and len(text) <= 32 and " " not in text and printable(text) == text else "MODEL"


def calibration_args(report: Report) -> str:
    """The calibration options that made ``report`` (its own --calib sources, a --seq-len other
    than the default, --mix even), for the commands it suggests: a suggestion that dropped them
    would measure other data. A source path too long or odd to print stands as CALIB."""
    from ..calib import DEFAULT_SEQ_LEN

    c = report.calibration
    args = []
    for src in c.sources or []:
        if getattr(src, "bundled", None) or not isinstance(getattr(src, "path", None), str):
            continue
        text = short_path(src.path)
        ok = text and len(text) <= 40 and " " not in text and printable(text) == text
        args.append(f"--calib {text if ok else 'CALIB'}")
    if isinstance(c.seq_len, int) and c.seq_len != DEFAULT_SEQ_LEN and not _ids_only(report):  # .npy rows are windows
        args.append(f"--seq-len {c.seq_len}")
    if c.mix == "even":
        args.append("--mix even")
    return "".join(" " + a for a in args)


def _ids_only(report: Report) -> bool:
    """Whether every calibration source was .npy token ids (used whole, each row one window)."""
    return {getattr(x, "kind", None) for x in report.calibration.sources or []} == {"npy"}


def next_steps(report: Report) -> list[tuple[str, str]]:
    """(what, command): what to run next, given this report, with the calibration options that
    made it."""
    model_path = report.model.path if report.model.path is not None else ""
    path = command_path(model_path) + calibration_args(report)
    a = report.advice
    measured = a.measured
    steps = []
    if a.withheld:
        if _ids_only(report):  # token ids are used whole: only more ids can help
            steps.append((f"calibrate ({a.withheld.recommended_tokens:,} tokens)",
                          f"sui-onnx report {command_path(model_path)} --calib MORE_IDS.npy"))
        else:
            steps.append(("calibrate", f"sui-onnx report {path} --tokens {a.withheld.recommended_tokens}"))
    heldout = "HELDOUT.txt"
    bundled = os.path.join(_PACKAGE, "data")
    if os.path.abspath(str(model_path)).startswith(os.path.abspath(bundled) + os.sep):
        heldout = command_path(os.path.join(bundled, "heldout.txt")).replace("MODEL", "HELDOUT.txt")
    if not measured:
        steps.append(("measure", f"sui-onnx report {path} --eval {heldout}"))
    steps.append(("narrow", f"sui-onnx slim {path} OUT {narrow_args(report)} --eval {heldout}"))
    steps.append(("baseline", f"sui-onnx report {path} --json base.json"))
    steps.append(("gate", f"sui-onnx check {path} --baseline base.json"))
    return steps


def narrow_args(report: Report) -> str:
    """slim's width options that build the width this report advises, so the command suggested runs
    and writes the model measured: --width K when every layer is min(K, D), the rung's --ratio when
    the layers differ, the --align the advice used, and for a search an --align that leaves a
    narrower width. An encoder (no loss to bound) is narrowed by ratio."""
    a = report.advice
    m = a.measured
    widths = [x.width for x in report.layers if x.width]
    current = a.current_width or (max(widths) if widths else 0)
    align = a.align or 64
    tail = f" --align {align}" if align != 64 else ""
    if m is not None and m.kind == "encoder":
        return "--ratio 0.5" + tail
    per_layer = list(m.recommended_widths or []) if m is not None else []
    width = m.recommended_width if m is not None else a.recommended_width
    if width and width < current:
        if not per_layer or len(per_layer) != len(widths) or all(min(width, d) == w for w, d in zip(per_layer, widths)):
            return f"--width {width}" + tail
        for part in str(m.recommended_label or "").split(" = "):
            r = RUNG_RATIOS.get(part)
            if r is not None and all(aligned(d, r, align) == w for w, d in zip(per_layer, widths)):
                return f"--ratio {r}" + tail
    loss = m.max_loss_increase if m is not None and m.max_loss_increase is not None else 0.01
    if current and current <= align:  # no narrower multiple of --align: the search would be refused
        align = max(1, 1 << max(0, (current // 2).bit_length() - 1))
        tail = f" --align {align}"
    return f"--max-loss-increase {loss:g}" + tail


def next_text(report: Report) -> Table:
    t = Table.grid(padding=(0, 2, 0, 0))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for i, (what, cmd) in enumerate(next_steps(report)):
        t.add_row("next" if i == 0 else "", what, Text(printable(cmd)))  # paths are data, never markup
    return t


def flags_note(report: Report) -> Text | None:
    by_message: dict[str, list[int]] = {}
    for x in report.layers:
        if x.message:
            by_message.setdefault(x.message, []).append(x.layer)
    if not by_message:
        return None
    notes = [f"layer{'s' if len(ls) > 1 else ''} {_span(ls)}: {printable(msg)}" for msg, ls in by_message.items()]
    if len(notes) > 4:
        notes = notes[:3] + [f"... and {len(notes) - 3} more layers flagged"]
    return Text("\n".join(notes), style="yellow")


def experts_note(report: Report) -> Text | None:
    """Which rows are several FFN blocks of one transformer layer (the experts of a mixture), or
    None: the table numbers FFN blocks, not transformer layers."""
    groups: dict[int, list[int]] = {}
    for x in report.layers:
        if x.group is not None:
            groups.setdefault(x.group, []).append(x.layer)
    if not groups:
        return None
    rows = sum(len(v) for v in groups.values())
    shown = [f"rows {_span(v)}: layer {g}" for g, v in list(groups.items())[:3]]
    if len(groups) > 3:
        more = len(groups) - 3
        shown.append(f"... {more} more layer{'s' if more > 1 else ''}")
    return Text(f"mixture of experts: {rows} of the rows are FFN blocks that share a transformer layer "
                f"({'; '.join(shown)}); an expert sees only the tokens routed to it (the tokens column)",
                style="dim")


def report_renderable(report: Report) -> Group:
    parts: list[Any] = [header(report), layer_table(report), legend(report)]
    for note in (experts_note(report), flags_note(report)):
        if note is not None:
            parts.append(note)
    parts.append(advice_panel(report))
    note = withheld_note(report)
    if note is not None:
        parts.append(Text(note, style="yellow"))
    parts.append(next_text(report))
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
        f"Model `{_md_code(m.path)}` (sha256 `{str(m.sha256 if m.sha256 is not None else '')[:12]}`), "
        f"{c.tokens or 0:,} calibration tokens, site `{report.settings.site}`.",
        "",
    ]
    if s.sui:
        out += [
            f"**Median SUI {s.median('sui'):.3f}** · hard rank {s.median('hard_rank'):.1f} · "
            f"soft rank {s.median('soft_rank'):.1f} · concentration {s.median('concentration'):.2f}",
            "",
        ]
    keys = report.settings.energy_keys()
    out += [
        "| layer | D | tokens | hard rank | soft rank | hard util | soft util | SC | SUI | " + " | ".join(keys) + " | status |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(keys) + ":--|",
    ]
    for x in report.layers:
        e = x.energy_widths
        out.append(
            f"| {x.layer} | {x.width} | {x.tokens} | {_fmt(x.hard_rank, '.2f')} | {_fmt(x.soft_rank, '.2f')} | "
            f"{_fmt(x.hard_util, '.3f')} | {_fmt(x.soft_util, '.3f')} | {_fmt(x.concentration, '.3f')} | "
            f"{_fmt(x.sui, '.3f')} | " + "".join(f"{_fmt(e.get(key), 'd')} | " for key in keys) + f"{x.status} |"
        )
    if a.measured:
        view = measured_view(report)
        before, width, after = view.headline
        head = sentence(before) + (f"**{width}**" if width else "") + after
        out += ["", f"**Width advice** (measured): {head}.", "", "| " + " | ".join(view.columns) + " |",
                "|:--|" + "---:|" * (len(view.columns) - 1)]
        out += ["| " + " | ".join(c.text if c.text is not None else "–" for c in row) + " |" for row in view.rows]
        out += ["", f"{view.legend}."] if view.rows else []
        for w in view.warnings:
            out += ["", f"Warning: {w}."]
        note = withheld_note(report)
        if note is not None:
            out += ["", f"{sentence(note)}."]
    else:
        view = estimate_view(report)
        before, width, after = view.headline
        notes = "".join(f" {sentence(n)}." for n in view.notes)
        if view.kind == "withheld":
            out += ["", f"**{sentence(before.rstrip(': '))}**: {after}.{notes}"]
        elif view.kind == "estimate":
            out += ["", f"**Width estimate** (unmeasured): {before}**{width}**{after}.{notes} Assumptions: "
                    + "; ".join(a.assumptions or []) + "."]
    out.append("")
    return "\n".join(out)
