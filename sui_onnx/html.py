"""Self-contained HTML reports (`report --html`, `scaling --html`): one file, inline CSS and SVG, no
script, no font, no image or anything else fetched (a Content-Security-Policy of default-src 'none'
says so to the browser). Laid out for a laptop screen and for a phone: tables scroll sideways in
their own box, charts scale with the page and stack in one column on a narrow screen."""

from __future__ import annotations

import platform
from html import escape
from typing import Any, Sequence

from .fmt import fmt_width
from .ladder import code_spans, estimate_view, measured_view, sentence, withheld_note
from .report import Report
from .svg import Ref, Series, chart, fitted, layer_color, thin

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

CSS = """
:root { color-scheme: light; --fg: #1d232a; --muted: #5b6470; --line: #d8dde3; --bg: #fff; --panel: #f6f8fa;
  --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --accent: #0969da; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: var(--fg); background: var(--bg); }
main { max-width: 1120px; margin: 0 auto; padding: 16px 20px 40px; }
h1 { font-size: 1.45rem; margin: 0.2em 0 0.1em; overflow-wrap: anywhere; }
h2 { font-size: 1.12rem; margin: 1.6em 0 0.5em; padding-bottom: 0.2em; border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin: 1em 0 0.4em; }
p { margin: 0.4em 0; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.88em;
  overflow-wrap: anywhere; }
.sub { color: var(--muted); margin: 0 0 0.8em; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0.6em 0; }
dl.facts dt { font-weight: 600; color: var(--muted); }
dl.facts dd { margin: 0; min-width: 0; overflow-wrap: anywhere; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; margin: 0.8em 0; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; }
.card .v { font-size: 1.35rem; font-weight: 650; }
.card .k { color: var(--muted); font-size: 0.85rem; }
.note { border-left: 4px solid var(--warn); background: #fff8c5; padding: 6px 10px; margin: 0.5em 0; border-radius: 4px; }
.note.bad { border-color: var(--bad); background: #ffebe9; }
.box { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; margin: 0.6em 0; background: var(--panel); }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; max-width: 100%; }
caption { text-align: left; caption-side: top; padding: 0 0 4px; }
.hint { display: none; color: var(--muted); font-size: 0.8rem; margin: 2px 0; }
table { border-collapse: collapse; font-size: 0.9rem; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 9px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { background: var(--panel); font-weight: 600; position: sticky; top: 0; }
td.l, th.l { text-align: left; }
tr.median td { font-weight: 650; border-top: 2px solid var(--line); }
tr.ref td { color: var(--muted); font-style: italic; }
.st-ok { color: var(--ok); } .st-low_tokens, .st-rank_capped { color: var(--warn); font-weight: 600; }
.st-degenerate, .st-non_finite { color: var(--bad); font-weight: 600; }
.pass { color: var(--ok); font-weight: 600; } .fail { color: var(--bad); font-weight: 600; }
.bar { display: inline-block; height: 0.7em; background: #2da2bf; border-radius: 2px; vertical-align: middle; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 420px), 1fr)); gap: 14px; }
figure.chart { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 8px 8px 6px; min-width: 0; }
figure.chart figcaption { font-weight: 600; font-size: 0.92rem; margin: 0 4px 4px; }
figure.chart figcaption small { font-weight: 400; color: var(--muted); }
figure.chart > svg { display: block; width: 100%; height: auto; }
svg.swatch { width: 22px; height: 10px; flex: none; }
.plot-area { fill: #fff; stroke: #9aa4ae; stroke-width: 0.8; }
.grid { stroke: #e6e9ed; stroke-width: 0.8; }
.tick { font-size: 12px; fill: #444; font-family: system-ui, sans-serif; }
.axis { font-size: 13px; fill: #222; font-family: system-ui, sans-serif; }
.reflabel { font-size: 11px; font-family: system-ui, sans-serif; paint-order: stroke; stroke: #fff; stroke-width: 3px;
  stroke-linejoin: round; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 0.82rem; margin: 4px 4px 0; color: #333; }
.legend .key { display: inline-flex; align-items: center; gap: 5px; white-space: nowrap; }
ul.legendlist { margin: 0.4em 0; padding-left: 1.2em; } ul.legendlist li { margin: 0.15em 0; }
ol.steps li, ul.plain li { margin: 0.25em 0; }
footer { color: var(--muted); font-size: 0.82rem; margin-top: 2.5em; border-top: 1px solid var(--line); padding-top: 0.6em; }
@media (max-width: 600px) {
  body { font-size: 14px; } main { padding: 10px 12px 30px; } h1 { font-size: 1.2rem; }
  dl.facts { grid-template-columns: 1fr; } dl.facts dt { margin-top: 6px; }
  th, td { padding: 3px 6px; }
  .hint { display: block; }
}
"""


def _e(text: Any) -> str:
    from .safeio import printable

    return escape(printable("" if text is None else text))


def _num(v: Any, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta name=\"referrer\" content=\"no-referrer\">\n"
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def environment() -> dict[str, str]:
    """Versions of what renders this file (read from the installed packages, nothing imported)."""
    from importlib import metadata

    from ._version import __version__

    out = {"sui-onnx": __version__, "python": platform.python_version()}
    for dist in ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (0,),
           row_class: Sequence[str] | None = None, caption: str = "") -> str:
    """An HTML table in a sideways-scrolling box; cells are already HTML."""
    th = "".join(f'<th class="l" scope="col">{h}</th>' if i in left else f'<th scope="col">{h}</th>'
                 for i, h in enumerate(head))
    body = []
    for n, row in enumerate(rows):
        cls = f' class="{row_class[n]}"' if row_class and row_class[n] else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="l">{c}</td>' if i in left else f"<td>{c}</td>"
                                           for i, c in enumerate(row)) + "</tr>")
    cap = f"<caption class=\"sub\">{caption}</caption>" if caption else ""
    return f'<div class="scroll"><table>{cap}<thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _facts(items: Sequence[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


# ------------------------------------------------------------------------------------------------
# report --html


def report_html(report: Report) -> str:
    """The whole report as one HTML page."""
    from .plots import model_name, subtitle

    name = model_name(report)
    parts = [f"<h1>sui-onnx report: {_e(name)}</h1>", f'<p class="sub">{_e(subtitle(report))}</p>',
             _header(report), _notes(report), _summary(report), "<h2 id=\"layers\">Per layer</h2>",
             _layer_table(report), _legend(report), '<h2 id="advice">Width advice</h2>', _advice(report),
             '<h2 id="plots">Spectra and energy</h2>', _plots(report), '<h2 id="next">Next steps</h2>',
             _next(report), '<h2 id="assumptions">Assumptions</h2>', _assumptions(report),
             '<h2 id="provenance">Provenance</h2>', _provenance(report)]
    return page(f"sui-onnx report: {name}", "\n".join(p for p in parts if p))


def _header(report: Report) -> str:
    from .render import seq_text, short_path

    m, c, r = report.model, report.calibration, report.runtime
    sources = ", ".join(f"<code>{_e(short_path(s.path if s.path is not None else '?'))}</code>" for s in c.sources or []) \
        or (f"saved statistics <code>{_e(short_path(c.from_stats))}</code>" if c.from_stats else "–")
    calib = f"{c.tokens or 0:,} tokens" + (f" · {_e(seq_text(c))}" if seq_text(c) else "") + f" · {sources}"
    if r.device == "none":
        run = f"from saved statistics <code>{_e(short_path(r.source if r.source is not None else '?'))}</code> " \
              "(no calibration run)"
    else:
        run = (f"{_e(r.device if r.device is not None else '–')} ({_e(', '.join(r.providers or []) or '–')}) · "
               f"{r.elapsed_s or 0:.1f} s · {r.tokens_per_s or 0:,.0f} tok/s")
    taps = "named with --tap" if report.settings.taps == "explicit" else f"site {_e(report.settings.site)}"
    items = [("model", f"<code>{_e(short_path(m.path))}</code>"),
             ("sha256", f"<code>{_e(m.sha256 if m.sha256 is not None else '')}</code>"),
             ("opset", _e(m.opset)), ("calibration", calib), ("run", f"{run} · {taps}")]
    if m.encoder:
        items.insert(1, ("encoder", f"<code>{_e(short_path(m.encoder.path))}</code>"))
    return _facts(items)


def _notes(report: Report) -> str:
    from .render import unfilled_budget

    notes = []
    w = report.advice.withheld
    if w:
        notes.append(("bad", f"Thin data: {w.tokens:,} tokens &lt; 4·D = {w.min_tokens:,}. The metrics are "
                             "biased low (flagged below) and the width advice is withheld."))
    if unfilled_budget(report):
        notes.append(("", _e(unfilled_budget(report))))
    for x in report.calibration.sources or []:
        if x.tokens == 0:
            notes.append(("", f"No tokens from <code>{_e(x.path)}</code>: the budget was spent on the sources "
                              "before it (--mix even gives each source an equal share)."))
    if (report.runtime.passes or 1) > 1:
        notes.append(("", f"{report.runtime.passes} passes over the calibration data (memory cap)."))
    if report.model.dequantized_from:
        notes.append(("", f"Weights dequantized from {_e(report.model.dequantized_from)}."))
    return "".join(f'<p class="note {cls}">{text}</p>' for cls, text in notes)


def _summary(report: Report) -> str:
    s = report.summary
    if not s.sui:
        return '<p class="note bad">No usable layer: no metrics to summarize.</p>'
    cards = [("median SUI", _num(s.median("sui")), "0..1, higher = more of the width used"),
             ("median hard rank", _num(s.median("hard_rank"), ".1f"), f"of D = {'/'.join(map(str, s.widths or []))}"),
             ("median soft rank", _num(s.median("soft_rank"), ".1f"), "1..D, higher = more used"),
             ("median concentration", _num(s.median("concentration"), ".2f"), "0..1, lower = more used")]
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div><div class="k">{h}</div></div>'
        for k, v, h in cards) + "</div>"


def _layer_table(report: Report) -> str:
    keys = report.settings.energy_keys()
    head = ["layer", "D", "tokens", "hard", "soft", "hard/D", "soft/D", "SC", "SUI", "", *keys, "status"]
    rows, classes = [], []
    for x in report.layers:
        e = x.energy_widths
        bar = f'<span class="bar" style="width:{max(0.0, min(1.0, x.sui or 0)) * 60:.1f}px"></span>' if x.sui else ""
        rows.append([str(x.layer), str(x.width), f"{x.tokens:,}", _num(x.hard_rank, ".1f"), _num(x.soft_rank, ".1f"),
                     _num(x.hard_util), _num(x.soft_util), _num(x.concentration, ".2f"), _num(x.sui), bar,
                     *[_num(e.get(key), "d") for key in keys],
                     f'<span class="st-{_e(x.status)}" title="{_e(x.message)}">{_e(x.status)}</span>'])
        classes.append("")
    s = report.summary
    if s.sui:
        rows.append(["median", "", "", _num(s.median("hard_rank"), ".1f"), _num(s.median("soft_rank"), ".1f"),
                     _num(s.median("hard_util")), _num(s.median("soft_util")),
                     _num(s.median("concentration"), ".2f"), _num(s.median("sui")), "", *[""] * len(keys), ""])
        classes.append("median")
    out = '<p class="hint">scroll the table sideways for every column →</p>' + _table(head, rows, left=(len(head) - 1,),
                                                                                       row_class=classes)
    flagged = {}
    for x in report.layers:
        if x.message:
            flagged.setdefault(x.message, []).append(str(x.layer))
    if flagged:
        out += "".join(f'<p class="note">Layer{"s" if len(ls) > 1 else ""} {", ".join(ls)}: {_e(msg)}</p>'
                       for msg, ls in flagged.items())
    return out


def _legend(report: Report) -> str:
    from .render import TYPICAL, legend_lines

    items = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in legend_lines(report))
    return (f'<details open><summary>What the columns mean</summary><ul class="legendlist">{items}'
            f"<li>{_e(TYPICAL)}; gate a model against its own baseline rather than a fixed bar</li></ul></details>")


def _note(text: str) -> str:
    """A view's sentence as HTML: escaped, its `code` marks as <code>."""
    return "".join(f"<code>{_e(part)}</code>" if code else _e(part) for part, code in code_spans(sentence(text)))


def _advice(report: Report) -> str:
    if report.advice.measured:
        note = withheld_note(report)
        return _measured(report) + (f'<p class="note">{_note(note)}.</p>' if note else "")
    view = estimate_view(report)
    before, width, after = view.headline
    if view.kind == "withheld":
        return (f'<div class="box"><p class="fail">{_e(sentence(before) + after)}</p>'
                + "".join(f"<p>{_note(n)}.</p>" for n in view.notes) + "</div>")
    if view.kind == "none":
        return f'<div class="box"><p>{_e(sentence(before))}.</p></div>'
    *notes, caveat = view.notes
    return ('<div class="box"><p><b>Estimate</b> (variance kept, unmeasured): '
            f"{_e(before)}<b>{_e(width)}</b>{_e(after)}.</p>" + "".join(f"<p>{_note(n)}.</p>" for n in notes)
            + f'<p class="note">{_note(caveat)}.</p></div>')


def _measured(report: Report) -> str:
    view = measured_view(report)
    before, width, after = view.headline
    head = _e(sentence(before)) + (f"<b>{_e(width)}</b>" if width else "") + _e(after) + "."
    rows = [[f'<span class="{c.status}">{_e(c.text or "–")}</span>' if c.status else _e(c.text or "–") for c in row]
            for row in view.rows]
    warnings = "".join(f'<p class="note">{_e(w)}</p>' for w in view.warnings)
    legend = _e(view.legend).replace("`sui-onnx slim`", "<code>sui-onnx slim</code>")
    return (f'<div class="box"><p><b>Measured</b>: {head}</p><p class="hint">scroll the table sideways →</p>'
            + _table(list(view.columns), rows) + f'<p class="sub">{legend}.</p>' + warnings + "</div>")


def _plots(report: Report) -> str:
    import numpy as np

    from .plots import UTILIZATION_PANELS, advice_widths, subtitle

    sub = subtitle(report)
    layers = report.layers
    n = len(layers)
    eigs = report.eigenvalues or [None] * n
    xs_layers = [x.layer for x in layers]
    many = n > 12
    figs = []
    spectra, energy = [], []
    estimate = report.advice.estimate_key()  # the energy key the width advice keeps: "k95" for q = 0.95
    estimate_points = []
    for i, (x, ev) in enumerate(zip(layers, eigs)):
        if ev is None:
            continue
        ev = np.clip(np.asarray(ev, dtype=np.float64), 0, None)
        total = ev.sum()
        if not total > 0:
            continue
        p = ev / total
        idx = list(range(1, ev.size + 1))
        keep = p > 0
        sx, sy = thin([i for i, k in zip(idx, keep) if k], [float(v) for v, k in zip(p, keep) if k], log=True)
        color = layer_color(i, n)
        spectra.append(Series(f"layer {x.layer}", sx, sy, color, legend=not many))
        cum = np.cumsum(p)
        ex, ey = thin(idx, [float(v) for v in cum], log=True)
        energy.append(Series(f"layer {x.layer}", ex, ey, color, legend=not many))
        k = x.energy_widths.get(estimate)
        if k:
            estimate_points.append(Series("", [k], [float(cum[k - 1])], color, line=False, marker="circle", legend=False))
    if spectra:
        figs.append(chart(spectra, title="FFN activation covariance spectra", caption=sub, x_log=True, y_log=True,
                          x_label="eigenvalue index i (largest first)", y_label="share of variance p_i", uid="spectra"))
    widths = advice_widths(report)
    if energy:
        refs = [Ref("y", q, f"{q:.0%}") for q in report.settings.levels()]
        if widths["estimate"]:
            refs.append(Ref("x", max(widths["estimate"]), f"recommended {max(widths['estimate'])} (estimate)",
                            "#d9730d", "2 3"))
        if widths["measured"]:
            refs.append(Ref("x", max(widths["measured"]), f"recommended {max(widths['measured'])} (measured)",
                            "#1a7f37", "6 3"))
        lows = min(report.settings.levels()) - 0.35
        figs.append(chart(energy + estimate_points, title=f"Cumulative energy (dots: {estimate} of each layer)", caption=sub,
                          x_log=True, x_label="k (directions kept)", y_label="cumulative variance share",
                          y_lim=(max(0.0, lows), 1.005), refs=refs, uid="energy"))
    # the width each layer needs, and the recommendation, per layer
    need = []
    levels = report.settings.levels()
    q = report.advice.q if isinstance(report.advice.q, (int, float)) else 0.95
    for level, key in zip(levels, report.settings.energy_keys()):
        marker, opacity = ("circle", 1.0) if key == estimate else ("down", 0.55) if level < q else ("up", 0.55)
        label = key
        ys = [x.energy_widths.get(key) for x in layers]
        if any(v is not None for v in ys):
            need.append(Series(label, xs_layers, ys, "#0969da", line=False, marker=marker, opacity=opacity))
    if widths["estimate"]:
        need.append(Series("recommended (estimate)", xs_layers, widths["estimate"], "#d9730d", dash="2 3"))
    if widths["measured"]:
        need.append(Series("recommended (measured)", xs_layers, widths["measured"], "#1a7f37", dash="6 3"))
    if need:
        values = [float(v) for s in need for v in s.ys if v is not None]
        figs.append(chart(need, title="Width each layer needs", caption=sub, x_label="layer", y_label="neurons",
                          x_ticks=_layer_ticks(xs_layers), y_lim=fitted(values, floor=0.0), uid="widths"))
    for key, label, lo, hi in UTILIZATION_PANELS:
        ys = [getattr(x, key) for x in layers]
        vals = [float(v) for v in ys if v is not None]
        if not vals:
            continue
        short = {"hard_util": "hard rank / D", "soft_util": "soft rank / D", "concentration": "SC"}.get(key, "SUI")
        figs.append(chart([Series(label, xs_layers, ys, "#cf222e" if key == "concentration" else "#0969da",
                                  marker="circle", legend=False)],
                          title=label, caption=sub, x_label="layer", y_label=short,
                          x_ticks=_layer_ticks(xs_layers), y_lim=fitted(vals, floor=lo, ceiling=hi), uid=key))
    if not figs:
        return '<p class="sub">No spectra in this report (a report read from JSON keeps no eigenvalues; run the ' \
               "model, or pass --spectra).</p>"
    if not report.eigenvalues:
        figs.insert(0, '<p class="sub">Spectra and cumulative energy need the eigenvalues, which a report JSON '
                       "does not keep.</p>")
    return '<div class="charts">' + "".join(figs) + "</div>"


def _layer_ticks(layers: Sequence[int]) -> list[int]:
    """Every layer for a few; integer steps for many."""
    if len(layers) <= 16:
        return list(layers)
    step = max(1, round((max(layers) - min(layers)) / 8))
    return list(range(min(layers), max(layers) + 1, step))


def _next(report: Report) -> str:
    from .render import next_steps

    return "<ul class=\"plain\">" + "".join(f"<li><b>{_e(what)}</b>: <code>{_e(cmd)}</code></li>"
                                            for what, cmd in next_steps(report)) + "</ul>"


def _assumptions(report: Report) -> str:
    items = list(report.advice.assumptions or [])
    items.append("SUI and spectral concentration are project-defined (docs/metrics.md); hard and soft rank follow "
                 "Jha & Reagen, Spectral Scaling Laws in Language Models (EMNLP 2025)")
    items.append(f"metrics from the covariance of the FFN hidden activation at site "
                 f"{report.settings.site}, top fraction {report.settings.top_fraction}")
    return "<ul class=\"plain\">" + "".join(f"<li>{_e(x)}</li>" for x in items) + "</ul>"


def _provenance(report: Report) -> str:
    m, c = report.model, report.calibration
    rows = [[f"<code>{_e(s.path)}</code>", _e(s.kind), f"{s.tokens:,}" if isinstance(s.tokens, int) else "–",
             f"<code>{_e(s.sha256 if s.sha256 is not None else 'not recorded')}</code>"] for s in c.sources or []]
    env = environment()
    def given(value: Any) -> Any:
        return "–" if value is None else value

    items = [("model", f"<code>{_e(m.path)}</code>"), ("model sha256", f"<code>{_e(m.sha256)}</code>"),
             ("producer", _e(given(m.producer))), ("opset", _e(m.opset)),
             ("calibration", f"{c.tokens or 0:,} tokens (budget {given(c.token_budget)}), "
                             f"mix {_e(given(c.mix))}, batch {_e(given(c.batch_size))}"),
             ("analyzed by", f"{_e(report.tool.get('name', 'sui-onnx'))} {_e(report.tool.get('version', '?'))}"
                             + (f", {_e(report.created)}" if report.created else "")),
             ("rendered with", _e(", ".join(f"{k} {v}" for k, v in env.items()))),
             ("runtime", _e(", ".join(f"{k} {v}" for k, v in report.runtime.to_dict().items()
                                      if k in ("device", "precision", "passes"))))]
    out = _facts(items)
    if rows:
        out += "<h3>Calibration digest</h3>" + _table(["source", "kind", "tokens", "sha256"], rows, left=(0, 1, 3))
    return out + ('<footer>Written by <code>sui-onnx report --html</code>: one self-contained file, nothing fetched.'
                  "</footer>")


# ------------------------------------------------------------------------------------------------
# scaling --html


def scaling_html(result: Any, reports: Sequence[Report] | None = None) -> str:
    """A scaling analysis as one HTML page (``reports``: the inputs, for their calibration digests)."""
    import math

    from .plots_scaling import family_name, scaling_subtitle
    from .render import short_path

    sub = scaling_subtitle(result)
    fam = family_name(result)
    parts = [f"<h1>sui-onnx scaling: {_e(fam)}</h1>", f'<p class="sub">{_e(sub)}</p>']
    facts = [("models", f"{len(result.models)} widths, {result.n_layers} FFN layers each"),
             ("site", _e(result.site or "–")), ("family", _e(", ".join(
                 f"{k} {v if isinstance(v, str) else '/'.join(v)}" for k, v in (result.family or {}).items()) or "–"))]
    parts.append(_facts(facts))

    def num(v, spec=".3f"):
        return "–" if v is None or not math.isfinite(v) else format(v, spec)

    peak = result.sui_peak
    rows = [[str(m.width), f"{m.usable_layers}/{m.n_layers}", f"{m.min_tokens:,}", num(m.median_hard, ".2f"),
             num(m.median_soft, ".2f"), num(m.median_hard / m.width), num(m.median_soft / m.width),
             num(m.median_sui) + (" ★" if m.width == peak["width"] else "")] for m in result.models]
    parts += ["<h2>Per width (median over usable layers)</h2>",
              _table(["D", "layers", "tokens", "hard rank", "soft rank", "hard/D", "soft/D", "SUI"], rows, left=())]

    from .scaling import PAPER_REFERENCE as ref

    def ci(c):
        lo, hi = c
        return "–" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{lo:.3f}, {hi:.3f}]"

    fits = [["soft rank", num(result.soft.beta), ci(result.soft.beta_ci95), num(result.soft.A, ".4g"), num(result.soft.r2), str(result.soft.n)],
            ["hard rank", num(result.hard.beta), ci(result.hard.beta_ci95), num(result.hard.A, ".4g"), num(result.hard.r2), str(result.hard.n)],
            ["soft − hard", num(result.asymmetry.beta), ci(result.asymmetry.beta_ci95), "", "", str(result.asymmetry.n)],
            ["paper: soft rank", f"{ref['soft'][0]:.3f}", "", "", f"{ref['soft'][1]:.3f}", ""],
            ["paper: hard rank", f"{ref['hard'][0]:.3f}", "", "", f"{ref['hard'][1]:.3f}", ""],
            ["paper: soft − hard", f"{ref['soft'][0] - ref['hard'][0]:.3f}", "", "", "", ""]]
    parts += ["<h2>Power-law fits: rank = A · D<sup>β</sup> (median over layers)</h2>",
              _table(["quantity", "β", "95% CI", "A", "R²", "n"], fits, row_class=["", "", "", "ref", "ref", "ref"],
                     caption=_e(ref["caption"]))]
    layer_rows = []
    for x in result.layers:
        if x.soft is None:
            layer_rows.append([str(x.layer), f"no fit ({len(set(x.widths))} widths)", "", "", "", ""])
        else:
            layer_rows.append([str(x.layer), num(x.soft.beta), num(x.soft.r2), num(x.hard.beta), num(x.hard.r2),
                               num(x.asymmetry.beta)])
    parts += ["<h2>Per layer</h2>", _table(["layer", "β soft", "R²", "β hard", "R² ", "soft − hard"], layer_rows, left=())]
    sat = result.saturation
    if sat.status == "reached":
        sat_line = f"D* = {fmt_width(sat.width)} ({sat.position} the measured widths)"
    elif sat.status == "no_growth":
        sat_line = "not defined: the fitted hard rank does not grow with width (β_hard ≤ 0)"
    else:
        sat_line = "not reached: β_hard ≥ 1, the slope never falls"
    parts.append(f'<div class="box"><p>Hard-rank saturation (d hard / d D &lt; {sat.tau:g}): {_e(sat_line)}.</p>'
                 f"<p>SUI peak: D = {peak['width']:,}, median SUI {num(peak['median_sui'])} ({_e(peak['position'])} "
                 "of the measured widths).</p>" + "".join(f'<p class="note">{_e(w)}</p>' for w in result.warnings)
                 + "</div>")
    parts += ["<h2>Plots</h2>", _scaling_plots(result, sub)]
    env = environment()
    prov_rows = []
    for i, m in enumerate(result.models):
        rep = reports[i] if reports is not None and i < len(reports) else None
        digests = ", ".join((s.sha256 or "not recorded")[:16] for s in ((rep.calibration.sources or []) if rep else []))
        prov_rows.append([f"<code>{_e(short_path(m.label))}</code>", str(m.width),
                          f"<code>{_e(str(m.provenance.get('sha256', '–'))[:16])}</code>", f"{m.min_tokens:,}",
                          f"<code>{_e(digests or '–')}</code>"])
    parts += ["<h2>Provenance</h2>", _table(["input", "D", "model sha256", "tokens", "calibration sha256"], prov_rows,
                                            left=(0, 2, 4)),
              _facts([("rendered with", _e(", ".join(f"{k} {v}" for k, v in env.items()))),
                      ("assumptions", "rank = A·D<sup>β</sup> fitted by least squares in log-log space; 95% "
                                      "t-intervals; medians over usable layers; one family at one depth")]),
              '<footer>Written by <code>sui-onnx scaling --html</code>: one self-contained file, nothing fetched.</footer>']
    return page(f"sui-onnx scaling: {fam}", "\n".join(parts))


def _scaling_plots(result: Any, sub: str) -> str:
    import numpy as np

    widths = [float(w) for w in result.widths]
    grid = [float(v) for v in np.geomspace(min(widths), max(widths), 60)]
    series = []
    for key, fit, color, label in (("soft", result.soft, "#0969da", "soft rank"), ("hard", result.hard, "#cf222e", "hard rank")):
        for i in range(result.n_layers):
            ys = [getattr(m, f"layer_{key}")[i] for m in result.models]
            xs = [m.layer_widths[i] for m in result.models]
            series.append(Series("", xs, ys, color, line=False, marker="circle", opacity=0.25, legend=False))
        series.append(Series(f"{label} (median)", widths, [getattr(m, f"median_{key}") for m in result.models], color,
                             line=False, marker="circle"))
        series.append(Series(f"fit: β = {fit.beta:.3f}, R² = {fit.r2:.3f}" if math_ok(fit.r2) else f"fit: β = {fit.beta:.3f}",
                             grid, [float(v) for v in fit.predict(np.asarray(grid))], color))
    ticks = [int(w) for w in widths]
    figs = [chart(series, title="Rank against width (faint: single layers)", caption=sub, x_log=True, y_log=True,
                  x_label="FFN width D", y_label="effective rank", x_ticks=ticks, x_tick_labels=[str(t) for t in ticks],
                  uid="ranks")]
    sui = [Series("", [m.layer_widths[i] for m in result.models], [m.layer_sui[i] for m in result.models], "#1a7f37",
                  opacity=0.3, legend=False) for i in range(result.n_layers)]
    sui.append(Series("SUI (median over layers)", widths, [m.median_sui for m in result.models], "#1a7f37", marker="circle"))
    peak = result.sui_peak
    sui.append(Series(f"peak at D = {peak['width']}", [peak["width"]], [peak["median_sui"]], "#111", line=False, marker="star"))
    values = [v for s in sui for v in s.ys if v is not None]
    figs.append(chart(sui, title="SUI against width (faint: single layers)", caption=sub, x_log=True,
                      x_label="FFN width D", y_label="SUI", x_ticks=ticks, x_tick_labels=[str(t) for t in ticks],
                      y_lim=fitted(values, floor=0.0, ceiling=1.0), uid="sui"))
    return '<div class="charts">' + "".join(figs) + "</div>"


def math_ok(v: float) -> bool:
    import math

    return v is not None and math.isfinite(v)
