"""What the width advice says, once, for the three renderers (the terminal's rich panel and the
markdown in render/report.py, the HTML report in html.py), as plain text; each renderer only
escapes, emphasizes and colours.

- ``measured_view``: the measured advice (``report --eval``): the headline, the ladder's columns and
  cells with their pass/fail status, the legend and the warnings. Decoders are measured by dCE
  against the original; encoders (no logits) by the cosine and relative error of their last hidden
  state, and get no recommended width.
- ``estimate_view``: the unmeasured advice: the k_q estimate with what it counted and why it is not
  a deployable width, or why the advice is withheld, or that there is none.

In the notes a command or option is marked `like this`: markdown keeps the backticks, HTML makes
them code, the terminal drops them (``code_spans``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .report import Advice, Report

CAVEAT = ("a compressibility estimate, not a deployable width: accuracy must be measured (`sui-onnx report --eval "
          "HELDOUT` or `sui-onnx slim --eval HELDOUT`); a narrower FFN without retraining costs more than the "
          "variance it drops")
STARVED = "the spectra of starved layers are biased low: a width read from them would be too narrow"


@dataclass(frozen=True)
class Cell:
    text: str | None            # None: not measured (each renderer shows its own dash)
    status: str | None = None   # "pass" / "fail" (slim's dCE against the budget), else None


@dataclass(frozen=True)
class LadderView:
    encoder: bool
    headline: tuple[str, str, str]  # (before, emphasized, after): the emphasized part is the width
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    legend: str
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class EstimateView:
    kind: str                       # "estimate" | "withheld" | "none"
    headline: tuple[str, str, str]  # (before, emphasized, after): the emphasized part is the needed width
    notes: tuple[str, ...]          # sentences after the headline; `...` marks a command or option


def sentence(text: str) -> str:
    """``text`` with its first letter capitalized (the views are lower case, as in the terminal)."""
    return text[:1].upper() + text[1:]


def code_spans(text: str) -> list[tuple[str, bool]]:
    """``text`` split at its backticks into (part, is_code) pairs."""
    return [(part, i % 2 == 1) for i, part in enumerate(text.split("`")) if part]


LADDER = ((1, 8), (1, 4), (1, 2), (3, 4))  # report --eval: widths D/8, D/4, D/2, 3D/4


def rung_label(num: int, den: int) -> str:
    """A ladder rung's label: "D/8", "3D/4"."""
    return f"{num}D/{den}" if num > 1 else f"D/{den}"


RUNG_RATIOS = {rung_label(num, den): num / den for num, den in LADDER}  # "D/2" -> 0.5


def aligned(width: int, ratio: float, align: int) -> int:
    """ratio x width rounded up to a multiple of ``align``, within [min(align, width), width]."""
    k = int(math.ceil(ratio * width / align - 1e-9)) * align
    return int(min(width, max(k, min(align, width))))


def width_span(widths: Sequence[int]) -> str:
    """Per-layer widths in a few characters: "128" when every layer has it, else "64..128"."""
    return str(widths[0]) if len(set(widths)) == 1 else f"{min(widths)}..{max(widths)}"


def listing(items: list[Any], most: int = 6) -> str:
    shown = ", ".join(str(x) for x in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def counted_text(a: Advice) -> str:
    """Which layers the width advice counted, in words."""
    counted = a.counted or {}
    layers = counted.get("layers")
    n = len(layers) if isinstance(layers, list) else None
    quantile = a.quantile if a.quantile is not None else 1.0
    if n is None:  # a report written before "counted" existed
        return "every usable layer" if quantile >= 1.0 else f"the {quantile:.0%} quantile of layers"
    excluded = counted.get("excluded") or 0
    total = n + excluded
    if quantile >= 1.0:
        text = f"all {n} usable layers" if n > 1 else "the one usable layer"
        if counted.get("set_by") is not None and n > 1:
            text += f" (layer {counted['set_by']} sets it)"
    else:
        above = counted.get("above_needed") or []
        text = f"the {quantile:.0%} quantile of {n} layers"
        if above:
            text += f"; layer{'s' if len(above) > 1 else ''} {listing(above)} need{'' if len(above) > 1 else 's'} more"
    if excluded:
        text += f"; {excluded} of {total} layers excluded (no usable spectrum)"
    return text


def estimate_view(report: Report) -> EstimateView:
    """The unmeasured advice of ``report`` (for a report without ``report.advice.measured``)."""
    a = report.advice
    if a.withheld:
        return EstimateView("withheld", ("width advice withheld: ", "", a.withheld.reason), (STARVED,))
    if not a or a.recommended_width is None:
        return EstimateView("none", ("no usable layer: no width advice", "", ""), ())
    needed = a.needed_width if "needed_width" in a else a.recommended_width
    align = a.align if "align" in a else 64
    return EstimateView("estimate", (f"k{round(100 * a.q)} needs ", str(needed),
                                     f" of {a.current_width} neurons; {a.recommended_width} after rounding up to a "
                                     f"multiple of {align}"),
                        (f"counted: {counted_text(a)}; the worst layer loses {a.max_variance_lost:.2%} of its variance",
                         CAVEAT))


def withheld_note(report: Report) -> str | None:
    """For measured advice over a calibration too thin for the estimate: why the k_q estimate was not
    measured (None otherwise)."""
    a = report.advice
    if not (a.measured and a.withheld):
        return None
    return f"calibration: {a.withheld.reason} (the {a.estimate_key()} estimate was not measured)"


def _num(value: float | None, spec: str) -> str | None:
    return None if value is None else format(value, spec)


def measured_view(report: Report) -> LadderView:
    """The measured advice of ``report`` (``report.advice.measured`` must be set)."""
    m = report.advice.measured
    current = report.advice.current_width
    encoder = m.kind == "encoder"
    names = ", ".join(str(s.get("path", "?")).rsplit("/", 1)[-1] for s in m.eval or [])
    if encoder:
        headline = ("an encoder (no logits): the ladder compares the last hidden state with the original's (worst "
                    "eval source); there is no loss to bound, so no width is recommended", "", "")
    elif m.unresolved:
        headline = (f"no width recommended: the held-out measurement cannot tell: {m.unresolved}", "", "")
    elif m.recommended_width is not None:
        per_layer = list(m.recommended_widths or [])
        full = [x.width for x in report.layers if x.width]
        uneven = len(set(per_layer)) > 1 and len(per_layer) == len(full)
        headline = ("recommended FFN width" + ("s " if uneven else " "),
                    width_span(per_layer) if uneven else str(m.recommended_width),
                    f" of {width_span(full) if uneven else current} ({m.recommended_label}): measured dCE within {m.max_loss_increase} nats/token on "
                    f"{names}; saves {m.ffn_param_saving:.0%} of FFN parameters")
    else:
        headline = (f"no measured width keeps dCE within {m.max_loss_increase} nats/token on {names}: keep {current} "
                    "(or allow more with --max-loss-increase)", "", "")
    measures = ("cos proj", "cos slim", "err slim") if encoder else ("dCE projection", "dCE slim", "top-1 slim")
    rows = []
    for row in m.ladder or []:
        if encoder:
            cells = (Cell(_num(row.projection.get("worst_cosine"), ".5f")), Cell(_num(row.slim.get("worst_cosine"), ".5f")),
                     Cell(_num(row.slim.get("worst_rel_error"), ".4f")))
        else:
            slim = row.slim.get("worst_delta_ce")
            top1 = [s["top1"] for s in row.slim.get("sources", []) if s.get("top1") is not None]
            cells = (Cell(_num(row.projection.get("worst_delta_ce"), "+.4f")),
                     Cell(_num(slim, "+.4f"), "pass" if slim is not None and slim <= m.max_loss_increase else "fail"),
                     Cell(f"{100 * min(top1):.1f}%" if top1 else None))
        rows.append((Cell(row.label), Cell(width_span(row.widths)), Cell(f"{row.ffn_param_saving:.0%}"), *cells))
    legend = ("cos: mean per-token cosine of the last hidden state (proj: projection); err: its relative L2 error"
              if encoder else
              "dCE: held-out cross-entropy increase in nats/token, worst eval source; projection = the top "
              "principal directions only (full width, saves nothing); slim = the narrower FFN `sui-onnx slim` writes")
    return LadderView(encoder, headline, ("width", "neurons", "FFN saved", *measures), tuple(rows), legend,
                      tuple(m.warnings or []))
