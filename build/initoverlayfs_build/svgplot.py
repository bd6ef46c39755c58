"""A boot's timeline as an SVG picture, one bar per span on a common time axis, the way
`systemd-analyze plot` draws units: written by hand, so the report needs no plotting library
on the machine it describes."""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape

from .bootreport import Span

ROW = 22
LABEL = 300  # px for the names
WIDTH = 900  # px for the time axis
MARGIN = 90  # px after it, for the last bar's duration
COLOURS = ("#4e79a7", "#f28e2b")  # a span, a part of one


def _ticks(end: float) -> list[float]:
    """Round steps along the axis, about ten of them."""
    step = 0.001
    while end / step > 10:
        for factor in (2, 2.5, 2):
            step *= factor
            if end / step <= 10:
                break
    return [i * step for i in range(int(end / step) + 1)]


def svg(spans: Sequence[Span], title: str) -> str:
    end = max((s.end for s in spans), default=1.0) or 1.0
    scale = WIDTH / end
    height = ROW * (len(spans) + 3)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{LABEL + WIDTH + MARGIN}" '
           f'height="{height}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="16" font-size="14">{escape(title)}</text>']
    axis = ROW * (len(spans) + 2)
    for tick in _ticks(end):
        x = LABEL + tick * scale
        out.append(f'<line x1="{x:.1f}" y1="{ROW}" x2="{x:.1f}" y2="{axis}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{axis + 14}" text-anchor="middle">{tick:g} s</text>')
    for row, span in enumerate(spans, start=1):
        y = ROW * row + 4
        x, w = LABEL + span.start * scale, max((span.end - span.start) * scale, 1.0)
        colour = COLOURS[min(span.level, 1)]
        label = escape(span.name)  # indented by its x
        out.append(f'<text x="{10 + 14 * span.level}" y="{y + 13}">{label}</text>')
        out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ROW - 6}" '
                   f'fill="{colour}"><title>{escape(span.name)}: {span.ms:.1f} ms</title></rect>')
        out.append(f'<text x="{x + w + 4:.1f}" y="{y + 13}" fill="#555">{span.ms:.0f} ms'
                   '</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
