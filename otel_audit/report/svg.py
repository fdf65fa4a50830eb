"""Charts as inline SVG, drawn here in Python: the report needs no script, font or network to show them.

Each function takes already aggregated numbers (a few hundred points at
most) and returns one ``<svg>`` element. Every label that comes from the
database is escaped for HTML and made visible (control and bidi characters
as escapes) by :func:`text`; every bar and point carries a ``<title>`` with
its exact numbers, which browsers show on hover and screen readers read.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from otel_audit.cli.output import escape_text

__all__ = ["Series", "bar_list", "line_chart", "stacked_bars", "text"]

WIDTH = 960


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    values: Sequence[int]


def text(value: object) -> str:
    """Stored text made safe for HTML: non-printable characters as visible escapes, then HTML-escaped."""
    return html.escape(escape_text("" if value is None else str(value), backslash=False), quote=True)


def _nice_max(value: int) -> int:
    """The top of an axis with four whole-number ticks: the smallest 4 x (a round step x 10^k) >= value."""
    if value <= 4:
        return 4
    magnitude = 10 ** int(math.floor(math.log10(value / 4)))
    for step in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        tick = step * magnitude
        if tick == int(tick) and 4 * tick >= value:
            return int(4 * tick)
    return int(40 * magnitude)


def _count(n: float) -> str:
    n = int(n)
    if n >= 1_000_000:
        return f"{n / 1_000_000:g}M"
    if n >= 10_000:
        return f"{n / 1000:g}k"
    return f"{n:,}"


def _y_axis(top: int, x0: float, x1: float, y0: float, height: float) -> list[str]:
    parts = []
    for i in range(5):
        value = top * i / 4
        y = y0 + height - height * i / 4
        parts.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">{_count(value)}</text>')
    return parts


def _x_labels(labels: Sequence[str], x_of: Callable[[int], float], y: float) -> list[str]:
    if not labels:
        return []
    every = max(1, math.ceil(len(labels) / 12))
    parts = []
    for i in range(0, len(labels), every):
        parts.append(f'<text x="{x_of(i):.1f}" y="{y}" class="axis" text-anchor="middle">{text(labels[i])}</text>')
    return parts


def _legend(series: Sequence[Series], x: float, y: float, *, counts: bool = True) -> list[str]:
    parts = []
    for s in series:
        label = f"{s.name} ({sum(s.values):,})" if counts else s.name
        parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{s.color}"/>')
        parts.append(f'<text x="{x + 14}" y="{y}" class="legend">{text(label)}</text>')
        x += 30 + 7 * len(label)
    return parts


def _svg(height: int, title: str, body: list[str], chart_id: str) -> str:
    return (
        f'<svg class="chart" id="{chart_id}" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
        f'aria-labelledby="{chart_id}-title" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{chart_id}-title">{text(title)}</title>' + "".join(body) + "</svg>"
    )


def stacked_bars(
    chart_id: str, title: str, labels: Sequence[str], series: Sequence[Series], *, height: int = 260
) -> str:
    """One bar per label (a day, an hour, a week), stacked by series."""
    left, right, top_pad, bottom = 64, 36, 28, 40
    plot_h = height - top_pad - bottom
    n = max(1, len(labels))
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    top = _nice_max(max(totals, default=0))
    slot = (WIDTH - left - right) / n
    bar = max(1.0, slot * 0.8)
    body = _y_axis(top, left, WIDTH - right, top_pad, plot_h)
    for i, label in enumerate(labels):
        y: float = top_pad + plot_h
        x = left + i * slot + (slot - bar) / 2
        detail = ", ".join(f"{s.name} {s.values[i]:,}" for s in series)
        body.append(f"<g><title>{text(label)}: {totals[i]:,} ({text(detail)})</title>")
        for s in series:
            value = s.values[i]
            if not value:
                continue
            h = plot_h * value / top
            y -= h
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{max(h, 0.5):.1f}" fill="{s.color}"/>'
            )
        body.append("</g>")
    body += _x_labels(labels, lambda i: left + i * slot + slot / 2, height - bottom + 16)
    body += _legend(series, left, 16)
    if not any(totals):
        body.append(
            f'<text x="{WIDTH / 2}" y="{top_pad + plot_h / 2}" class="empty" text-anchor="middle">'
            "no records in this period</text>"
        )
    return _svg(height, title, body, chart_id)


def line_chart(chart_id: str, title: str, labels: Sequence[str], series: Sequence[Series], *, height: int = 220) -> str:
    """One line per series over the labels, with a marker per point."""
    left, right, top_pad, bottom = 64, 36, 28, 40
    plot_h = height - top_pad - bottom
    n = len(labels)
    top = _nice_max(max((max(s.values, default=0) for s in series), default=0))
    step = (WIDTH - left - right) / max(1, n - 1) if n > 1 else 0

    def x_of(i: int) -> float:
        return left + (i * step if n > 1 else (WIDTH - left - right) / 2)

    body = _y_axis(top, left, WIDTH - right, top_pad, plot_h)
    for s in series:
        points = [(x_of(i), top_pad + plot_h - plot_h * v / top) for i, v in enumerate(s.values)]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            body.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="2"/>')
        marker = 2.5 if n <= 120 else 1.2
        for i, (x, y) in enumerate(points):
            body.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{marker}" fill="{s.color}">'
                f"<title>{text(labels[i])}: {text(s.name)} {s.values[i]:,}</title></circle>"
            )
    body += _x_labels(labels, x_of, height - bottom + 16)
    body += _legend(series, left, 16)
    if not any(any(s.values) for s in series):
        body.append(
            f'<text x="{WIDTH / 2}" y="{top_pad + plot_h / 2}" class="empty" text-anchor="middle">'
            "none in this period</text>"
        )
    return _svg(height, title, body, chart_id)


def bar_list(
    chart_id: str,
    title: str,
    rows: Sequence[tuple[str, Sequence[int]]],
    series: Sequence[tuple[str, str]],
    *,
    threshold: int | None = None,
) -> str:
    """Horizontal bars, one row per label (an actor, a resource), segments per series.

    ``threshold`` draws a dashed line at that value (the failed-attempts threshold).
    """
    label_w, right, top_pad, row_h = 300, 70, 28, 22
    height = top_pad + row_h * max(1, len(rows)) + 10
    top = max((sum(values) for _, values in rows), default=0)
    if threshold is not None and rows:
        top = max(top, threshold + 1)
    scale = (WIDTH - label_w - right) / top if top else 0
    body = []
    for i, (label, values) in enumerate(rows):
        y = top_pad + i * row_h
        shown = escape_text(label, backslash=False)
        short = shown if len(shown) <= 40 else shown[:39] + "…"
        body.append(
            f"<g><title>{text(label)}: "
            + ", ".join(f"{text(name)} {v:,}" for (name, _), v in zip(series, values, strict=True))
            + "</title>"
        )
        body.append(f'<text x="{label_w - 8}" y="{y + 15}" class="label" text-anchor="end">{html.escape(short)}</text>')
        x = float(label_w)
        for (_, color), value in zip(series, values, strict=True):
            w = value * scale
            if w > 0:
                body.append(
                    f'<rect x="{x:.1f}" y="{y + 3}" width="{max(w, 0.5):.1f}" height="{row_h - 6}" fill="{color}"/>'
                )
            x += w
        body.append(f'<text x="{x + 6:.1f}" y="{y + 15}" class="value">{sum(values):,}</text></g>')
    if threshold is not None and scale and rows:
        tx = label_w + threshold * scale
        body.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{top_pad - 6}" y2="{height - 6}" class="threshold"/>')
        body.append(f'<text x="{tx + 4:.1f}" y="{top_pad - 10}" class="axis">threshold {threshold}</text>')
    if len(series) > 1:
        body += _legend([Series(name, color, ()) for name, color in series], label_w, 16, counts=False)
    if not rows:
        body.append(f'<text x="{WIDTH / 2}" y="{top_pad + 14}" class="empty" text-anchor="middle">none</text>')
    return _svg(height, title, body, chart_id)
