"""Small inline SVG charts for the HTML reports (html.py): line and marker series on linear or log
axes, with ticks, labelled reference lines and an HTML legend. No dependency, nothing external: the
SVG scales with its container (viewBox) and its text is real text."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Iterable, Sequence

W, H = 440, 270  # viewBox: small enough that its text stays readable on a phone
LEFT, RIGHT, TOP, BOTTOM = 54, 14, 12, 40

# viridis, sampled: layer colours (dark to light)
_VIRIDIS = ["#440154", "#482878", "#3e4a89", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b",
            "#fde725"]


def layer_color(i: int, n: int) -> str:
    """Colour of layer i of n along viridis (never its palest end, unreadable on white)."""
    if n <= 1:
        return _VIRIDIS[3]
    t = 0.88 * i / (n - 1)
    pos = t * (len(_VIRIDIS) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(_VIRIDIS) - 1)
    f = pos - lo
    a, b = _VIRIDIS[lo], _VIRIDIS[hi]
    rgb = [round(int(a[k:k + 2], 16) * (1 - f) + int(b[k:k + 2], 16) * f) for k in (1, 3, 5)]
    return "#" + "".join(f"{v:02x}" for v in rgb)


@dataclass
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    color: str = "#1f77b4"
    dash: str = ""  # stroke-dasharray, e.g. "4 3"
    line: bool = True
    marker: str = ""  # "" | "circle" | "up" | "down" | "star"
    opacity: float = 1.0
    legend: bool = True


@dataclass
class Ref:
    """A labelled reference line: horizontal (axis "y") or vertical (axis "x")."""

    axis: str
    value: float
    label: str
    color: str = "#777"
    dash: str = "4 3"


def _finite(values: Iterable[float | None], log: bool) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v) and (not log or v > 0)]


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round linear ticks (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out = []
    v = first
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten in [lo, hi]; with 2 and 5 between them when the range spans few decades."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    subs = (1, 2, 5) if b - a <= 2 else (1,)
    ticks = [m * 10.0 ** k for k in range(a, b + 1) for m in subs]
    ticks = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    if b - a > 7:  # many decades: every other one
        ticks = [t for t in ticks if round(math.log10(t)) % 2 == 0]
    return ticks or [lo, hi]


def fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        m, e = f"{v:.0e}".split("e")
        return f"{m}e{int(e)}"
    return f"{v:.6g}"


def fitted(values: Sequence[float], pad: float = 0.08, floor: float | None = None,
           ceiling: float | None = None) -> tuple[float, float]:
    """A range around the values (never a fixed 0..1), clipped to the measure's bounds."""
    if not values:
        return (0.0, 1.0)
    lo, hi = min(values), max(values)
    span = hi - lo if hi > lo else max(abs(hi) * 0.1, 1e-3)
    lo, hi = lo - pad * span, hi + pad * span
    if floor is not None:
        lo = max(lo, floor)
    if ceiling is not None:
        hi = min(hi, ceiling)
    return lo, hi


class _Scale:
    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool):
        self.log = log
        self.lo, self.hi = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
        if not self.hi > self.lo:
            self.hi = self.lo + 1
        self.a, self.b = a, b

    def __call__(self, v: float) -> float:
        t = (math.log10(v) if self.log else v) - self.lo
        return self.a + (self.b - self.a) * t / (self.hi - self.lo)


def _marker(kind: str, x: float, y: float, color: str, opacity: float) -> str:
    common = f'fill="{color}" fill-opacity="{opacity}" stroke="#222" stroke-width="0.5"'
    if kind == "up":
        return f'<path d="M{x:.1f} {y - 4:.1f} L{x + 4:.1f} {y + 3:.1f} L{x - 4:.1f} {y + 3:.1f} Z" {common}/>'
    if kind == "down":
        return f'<path d="M{x:.1f} {y + 4:.1f} L{x + 4:.1f} {y - 3:.1f} L{x - 4:.1f} {y - 3:.1f} Z" {common}/>'
    if kind == "star":
        pts = " ".join(f"{x + r * math.sin(k * math.pi / 5):.1f},{y - r * math.cos(k * math.pi / 5):.1f}"
                       for k, r in zip(range(10), [7, 3] * 5))
        return f'<polygon points="{pts}" {common}/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.2" {common}/>'


def chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str, x_log: bool = False,
          y_log: bool = False, x_ticks: Sequence[float] | None = None, x_tick_labels: Sequence[str] | None = None,
          x_lim: tuple[float, float] | None = None, y_lim: tuple[float, float] | None = None,
          refs: Sequence[Ref] = (), caption: str = "", uid: str = "c") -> str:
    """A <figure>: the SVG chart, an HTML legend of the named series and reference lines, a caption."""
    xs = _finite((x for s in series for x in s.xs), x_log) + [r.value for r in refs if r.axis == "x"]
    ys = _finite((y for s in series for y in s.ys), y_log)
    if x_lim is None:
        x_lim = (min(xs), max(xs)) if xs else (0.0, 1.0)
        if x_lim[0] == x_lim[1]:
            x_lim = (x_lim[0] - 0.5, x_lim[1] + 0.5)
        if not x_log and x_ticks is not None:
            x_lim = (x_lim[0] - 0.3, x_lim[1] + 0.3)  # room for the first and last marker
        elif x_log and x_ticks is not None:
            x_lim = (x_lim[0] / 1.1, x_lim[1] * 1.1)
    if y_lim is None:
        if y_log:
            y_lim = (min(ys), max(ys)) if ys else (1.0, 10.0)
            y_lim = (y_lim[0] / 1.3, y_lim[1] * 1.3)
        else:
            y_lim = fitted(ys)
    sx = _Scale(*x_lim, LEFT, W - RIGHT, x_log)
    sy = _Scale(*y_lim, H - BOTTOM, TOP, y_log)
    out = [f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
           f"<title>{escape(title)}</title>",
           f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" class="plot-area"/>']
    # ticks and grid
    if x_ticks is None:
        x_ticks = log_ticks(*x_lim) if x_log else nice_ticks(*x_lim)
    labels = list(x_tick_labels) if x_tick_labels is not None else [fmt_tick(t) for t in x_ticks]
    for t, lab in zip(x_ticks, labels):
        x = sx(t)
        if LEFT - 0.5 <= x <= W - RIGHT + 0.5:
            out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}" class="grid"/>')
            out.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 14}" text-anchor="middle" class="tick">{escape(lab)}</text>')
    for t in (log_ticks(*y_lim) if y_log else nice_ticks(*y_lim)):
        y = sy(t)
        if TOP - 0.5 <= y <= H - BOTTOM + 0.5:
            out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" class="grid"/>')
            out.append(f'<text x="{LEFT - 5}" y="{y + 4:.1f}" text-anchor="end" class="tick">{fmt_tick(t)}</text>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2:.1f}" y="{H - 6}" text-anchor="middle" class="axis">{escape(x_label)}</text>')
    out.append(f'<text transform="translate(13 {(TOP + H - BOTTOM) / 2:.1f}) rotate(-90)" text-anchor="middle" '
               f'class="axis">{escape(y_label)}</text>')
    # reference lines, labelled in the chart (labels of vertical lines stacked, never on each other)
    stacked = 0
    for r in refs:
        if r.axis == "y" and y_lim[0] <= r.value <= y_lim[1]:
            y = sy(r.value)
            out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="{r.color}" '
                       f'stroke-dasharray="{r.dash}" stroke-width="1"/>')
            out.append(f'<text x="{LEFT + 4}" y="{y - 3:.1f}" class="reflabel" fill="{r.color}">{escape(r.label)}</text>')
        elif r.axis == "x" and x_lim[0] <= r.value <= x_lim[1]:
            x = sx(r.value)
            out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}" stroke="{r.color}" '
                       f'stroke-dasharray="{r.dash}" stroke-width="1.3"/>')
            out.append(f'<text x="{x - 3:.1f}" y="{H - BOTTOM - 5 - 13 * stacked}" text-anchor="end" class="reflabel" '
                       f'fill="{r.color}">{escape(r.label)}</text>')
            stacked += 1
    # series, clipped to the plot area
    out.append(f'<clipPath id="clip-{escape(uid)}"><rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}"/>'
               "</clipPath>")
    out.append(f'<g clip-path="url(#clip-{escape(uid)})">')
    for s in series:
        pts = [(sx(x), sy(y)) for x, y in zip(s.xs, s.ys)
               if y is not None and math.isfinite(y) and (not y_log or y > 0) and (not x_log or x > 0)]
        if s.line and len(pts) > 1:
            d = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f} {y:.1f}" for i, (x, y) in enumerate(pts))
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            out.append(f'<path d="{d}" fill="none" stroke="{s.color}" stroke-width="1.6" '
                       f'stroke-opacity="{s.opacity}"{dash}/>')
        if s.marker:
            out += [_marker(s.marker, x, y, s.color, s.opacity) for x, y in pts]
    out.append("</g></svg>")
    items = [(s.name, s.color, s.dash, s.marker, s.line) for s in series if s.legend and s.name]
    items += [(r.label, r.color, r.dash, "", True) for r in refs if r.axis == "x"]
    legend = "".join(
        f'<span class="key"><svg class="swatch" viewBox="0 0 22 10" width="22" height="10" aria-hidden="true">'
        + (f'<line x1="0" y1="5" x2="22" y2="5" stroke="{c}" stroke-width="2"'
           + (f' stroke-dasharray="{d}"' if d else "") + "/>" if line else "")
        + (_marker(m, 11, 5, c, 1.0) if m else "") + f"</svg>{escape(name)}</span>"
        for name, c, d, m, line in items)
    cap = f"<figcaption>{escape(title)}" + (f"<br><small>{escape(caption)}</small>" if caption else "") + "</figcaption>"
    return f'<figure class="chart">{cap}{"".join(out)}<div class="legend">{legend}</div></figure>'


def thin(xs: Sequence[float], ys: Sequence[float], log: bool, most: int = 240) -> tuple[list[float], list[float]]:
    """At most ``most`` points of a long series, spread evenly (geometrically on a log axis); the
    first and last kept."""
    n = len(xs)
    if n <= most:
        return list(xs), list(ys)
    if log:
        idx = sorted({min(n - 1, int(round(v))) for v in (math.exp(math.log(n) * k / (most - 1)) - 1 for k in range(most))})
    else:
        idx = sorted({round(k * (n - 1) / (most - 1)) for k in range(most)})
    return [xs[i] for i in idx], [ys[i] for i in idx]
