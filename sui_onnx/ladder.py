"""What the measured width advice says, once, for both renderers (the terminal's rich panel in
render/report.py and the HTML report in html.py): the headline, the ladder's columns and cells with
their pass/fail status, the legend and the warnings, as plain text. Each renderer only escapes,
emphasizes and colours. Decoders are measured by dCE against the original; encoders (no logits) by
the cosine and relative error of their last hidden state, and get no recommended width."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import Report


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
    elif m.recommended_width is not None:
        headline = ("recommended FFN width ", str(m.recommended_width),
                    f" of {current} ({m.recommended_label}): measured dCE within {m.max_loss_increase} nats/token on "
                    f"{names}; saves {m.ffn_param_saving:.0%} of FFN parameters")
    else:
        headline = (f"no measured width keeps dCE within {m.max_loss_increase} nats/token on {names}: keep {current} "
                    "(or allow more with --max-loss-increase)", "", "")
    measures = ("cos proj", "cos slim", "err slim") if encoder else ("dCE projection", "dCE slim", "top-1 slim")
    rows = []
    for row in m.ladder or []:
        widths = row.widths
        w = str(widths[0]) if len(set(widths)) == 1 else f"{min(widths)}..{max(widths)}"
        if encoder:
            cells = (Cell(_num(row.projection.get("worst_cosine"), ".5f")), Cell(_num(row.slim.get("worst_cosine"), ".5f")),
                     Cell(_num(row.slim.get("worst_rel_error"), ".4f")))
        else:
            slim = row.slim.get("worst_delta_ce")
            top1 = [s["top1"] for s in row.slim.get("sources", []) if s.get("top1") is not None]
            cells = (Cell(_num(row.projection.get("worst_delta_ce"), "+.4f")),
                     Cell(_num(slim, "+.4f"), "pass" if slim is not None and slim <= m.max_loss_increase else "fail"),
                     Cell(f"{100 * min(top1):.1f}%" if top1 else None))
        rows.append((Cell(row.label), Cell(w), Cell(f"{row.ffn_param_saving:.0%}"), *cells))
    legend = ("cos: mean per-token cosine of the last hidden state (proj: projection); err: its relative L2 error"
              if encoder else
              "dCE: held-out cross-entropy increase in nats/token, worst eval source; projection = the top "
              "principal directions only (full width, saves nothing); slim = the narrower FFN `sui-onnx slim` writes")
    return LadderView(encoder, headline, ("width", "neurons", "FFN saved", *measures), tuple(rows), legend,
                      tuple(m.warnings or []))
