"""Charts drawn by the server as inline SVG: no script and no library in the browser.

Each function returns the SVG markup of one chart (safe to put in a page as it is: every text
in it is escaped here). Colours come from the stylesheet's classes (``s-success`` and so on),
so the charts follow the page's palette.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 180
LEFT, RIGHT, TOP, BOTTOM = 36, 8, 10, 24


def _axis(top_value: float, plot_h: float, unit: str = "") -> list[str]:
    """Grid lines and labels of the vertical axis (0, half, top)."""
    parts = []
    for frac in (0.0, 0.5, 1.0):
        y = TOP + plot_h * (1 - frac)
        value = top_value * frac
        label = f"{value:g}"
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" '
                     f'y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 4}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{escape(label + unit)}</text>')
    return parts


def _nice(value: float) -> float:
    """A round upper bound for an axis at least ``value``."""
    if value <= 0:
        return 1.0
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if value <= step:
            return float(step)
    return float(value)


def _svg(title: str, body: list[str]) -> Markup:
    # Every text in the body was escaped where it was put in.
    svg = (f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
           f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
           + "".join(body) + "</svg>")
    return Markup(svg)  # noqa: S704


def stacked_bars(title: str, buckets: Sequence[dict[str, int]], series: Sequence[str],
                 labels: Sequence[str]) -> Markup:
    """One bar per bucket, stacked by ``series`` (in that order, bottom first)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top_value = _nice(max((sum(b.get(s, 0) for s in series) for b in buckets), default=0))
    body = _axis(top_value, plot_h)
    slot = plot_w / max(len(buckets), 1)
    for i, bucket in enumerate(buckets):
        x = LEFT + i * slot + slot * 0.15
        y: float = TOP + plot_h
        for name in series:
            n = bucket.get(name, 0)
            if not n:
                continue
            h = plot_h * n / top_value
            y -= h
            body.append(f'<rect class="s-{escape(name)}" x="{x:.1f}" y="{y:.1f}" '
                        f'width="{slot * 0.7:.1f}" height="{h:.1f}"><title>'
                        f'{escape(labels[i])}: {n} {escape(name)}</title></rect>')
    step = max(1, len(buckets) // 6)
    for i in range(0, len(buckets), step):
        body.append(f'<text class="axis" x="{LEFT + (i + 0.5) * slot:.1f}" '
                    f'y="{HEIGHT - 6}" text-anchor="middle">{escape(labels[i])}</text>')
    return _svg(title, body)


def lines(title: str, series: dict[str, list[tuple[float, int]]], start: float,
          end: float) -> Markup:
    """One line per named series of (time, value) points over [start, end]."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top_value = _nice(max((v for pts in series.values() for _, v in pts), default=0))
    body = _axis(top_value, plot_h)
    span = max(end - start, 1.0)
    for k, (name, points) in enumerate(sorted(series.items())):
        coords = " ".join(f"{LEFT + plot_w * (t - start) / span:.1f},"
                          f"{TOP + plot_h * (1 - v / top_value):.1f}" for t, v in points)
        body.append(f'<polyline class="line c{k % 6}" points="{coords}"><title>'
                    f'{escape(name)}</title></polyline>')
        if len(points) <= 60:  # few samples: each one marked (a single one is a dot)
            for t, v in points:
                body.append(f'<circle class="c{k % 6}" r="2.5" '
                            f'cx="{LEFT + plot_w * (t - start) / span:.1f}" '
                            f'cy="{TOP + plot_h * (1 - v / top_value):.1f}"><title>'
                            f'{escape(name)}: {v}</title></circle>')
        body.append(f'<text class="legend c{k % 6}" x="{WIDTH - RIGHT - 110 * (k + 1)}" '
                    f'y="{TOP + 12}">{escape(name)}</text>')
    for frac in (0.0, 0.5, 1.0):
        t = start + span * frac
        anchor = "start" if frac == 0 else "end" if frac == 1 else "middle"
        body.append(f'<text class="axis" x="{LEFT + plot_w * frac:.1f}" y="{HEIGHT - 6}" '
                    f'text-anchor="{anchor}">{escape(time.strftime("%H:%M", time.gmtime(t)))}'
                    "</text>")
    return _svg(title, body)


def bars(title: str, values: Sequence[tuple[str, float, str]], unit: str = "s") -> Markup:
    """One bar per (label, value, state) in order; coloured by state."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top_value = _nice(max((v for _, v, _ in values), default=0))
    body = _axis(top_value, plot_h, unit)
    slot = min(plot_w / max(len(values), 1), 40.0)
    width = slot * 0.7
    for i, (label, value, state) in enumerate(values):
        h = plot_h * value / top_value
        body.append(f'<rect class="s-{escape(state)}" x="{LEFT + i * slot + slot * 0.15:.1f}" '
                    f'y="{TOP + plot_h - h:.1f}" width="{width:.1f}" height="{h:.1f}">'
                    f'<title>{escape(label)}: {value:.1f} {unit} ({escape(state)})</title>'
                    "</rect>")
    step = max(1, len(values) // 8)
    for i in range(0, len(values), step):
        body.append(f'<text class="axis" x="{LEFT + (i + 0.5) * slot:.1f}" y="{HEIGHT - 6}" '
                    f'text-anchor="middle">{escape(values[i][0])}</text>')
    return _svg(title, body)
