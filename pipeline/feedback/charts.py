"""Charts as inline SVG, drawn here: bars and lines on labelled axes, with no library, script or network.

A report is a file to mail around or a page behind a strict CSP, so its charts must be in the page
itself. Each is a ``<figure>``: a caption, the ``<svg role="img">`` with an ``aria-label`` that
says what it shows, a legend, and the same numbers as a table (folded away) for whoever cannot see
the picture. Every bar and point carries its number twice: in a ``<title>`` (the tooltip, read out by
screen readers) and in ``data-series``/``data-label``/``data-value`` attributes, so a test in a real
browser reads exactly what the chart shows. Colours are classes (``series-0``, ``series-1``…) that the
page's stylesheet defines: a ``style`` attribute would break the CSP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 60, 12, 14, 30
"""The drawing area inside the SVG's view box: room on the left for the values, below for the labels."""
MAX_LABELS = 12
"""At most this many labels under the x axis; the others are in each bar's title."""
TICKS = 4
MAX_BAR = 40
"""The widest a bar gets (a chart of two issues has two slim bars, not two walls)."""


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    key: str
    """``data-chart`` of the figure, for tests and stylesheets (``clicks-by-hour``)."""
    title: str
    labels: tuple[str, ...]
    """One per bar group or point, left to right."""
    series: tuple[Series, ...]
    percent: bool = False
    """Values are fractions, shown as percentages."""
    highlight: int | None = None
    """The index of a label to mark (the campaign the report is about)."""
    label_every: int = 0
    """Label every n-th position under the axis; 0 chooses so that at most ``MAX_LABELS`` show."""

    def __post_init__(self) -> None:
        if not self.series or any(len(s.values) != len(self.labels) for s in self.series):
            raise ValueError(f"chart {self.key}: every series needs one value per label")

    def format(self, value: float) -> str:
        if self.percent:
            return f"{value * 100:.1f}%"
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"

    def summary(self) -> str:
        """What the chart shows, in words (its ``aria-label``)."""
        parts = []
        for s in self.series:
            if not s.values:
                parts.append(f"{s.name}: no data")
                continue
            top = max(range(len(s.values)), key=s.values.__getitem__)
            most = f"highest {self.format(s.values[top])} ({self.labels[top]})"
            if self.percent:
                parts.append(f"{s.name}: {most}, last {self.format(s.values[-1])}")
            else:
                parts.append(f"{s.name}: {self.format(sum(s.values))} in all, {most}")
        return f"{self.title}. {'; '.join(parts)}."


def _step(maximum: float, percent: bool) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about ``TICKS`` ticks up to ``maximum``;
    counts step by whole numbers, percentages by at least 0.1 %."""
    smallest = 0.001 if percent else 1.0
    raw = max(maximum / TICKS, smallest)
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if raw <= m * power * (1 + 1e-9))


def _tick_text(value: float, step: float, percent: bool) -> str:
    if percent:
        decimals = 0 if step * 100 >= 1 - 1e-9 else 1
        return f"{value * 100:.{decimals}f}%"
    return f"{round(value):,}"


def _n(value: float) -> str:
    """A coordinate, short."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _data_value(value: float) -> str:
    return repr(round(float(value), 6))


@dataclass(frozen=True, slots=True)
class _Frame:
    """The axes of one chart: where a value and a position are drawn."""

    chart: Chart
    top: float
    step: float

    @classmethod
    def of(cls, chart: Chart) -> _Frame:
        highest = max((v for s in chart.series for v in s.values), default=0.0)
        step = _step(highest, chart.percent)
        return cls(chart, step * max(1, math.ceil(highest / step - 1e-9)), step)

    @property
    def width(self) -> float:
        return (WIDTH - LEFT - RIGHT) / max(1, len(self.chart.labels))

    def y(self, value: float) -> float:
        return TOP + (HEIGHT - TOP - BOTTOM) * (1 - value / self.top)

    def x(self, position: int) -> float:
        """The centre of a label's slot."""
        return LEFT + (position + 0.5) * self.width

    def axes(self) -> list[str]:
        chart, out = self.chart, []
        ticks = round(self.top / self.step)
        for i in range(ticks + 1):
            value = i * self.step
            y = _n(self.y(value))
            out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y}" y2="{y}"/>')
            text = escape(_tick_text(value, self.step, chart.percent))
            out.append(f'<text class="tick y" x="{LEFT - 6}" y="{y}" dy="0.32em">{text}</text>')
        every = chart.label_every or max(1, math.ceil(len(chart.labels) / MAX_LABELS))
        base = _n(self.y(0))
        out.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base}" y2="{base}"/>')
        for i, label in enumerate(chart.labels):
            if i % every == 0 or i == chart.highlight:
                mark = " current" if i == chart.highlight else ""
                out.append(
                    f'<text class="tick x{mark}" x="{_n(self.x(i))}" y="{HEIGHT - BOTTOM + 16}">{escape(label)}</text>'
                )
        return out

    def mark(self, tag: str, index: int, i: int, geometry: str) -> str:
        """Value ``i`` of series ``index`` as a bar or point, with its number in a title and in data
        attributes."""
        chart = self.chart
        series, label = chart.series[index], chart.labels[i]
        value = series.values[i]
        current = " current" if i == chart.highlight else ""
        return (
            f'<{tag} class="series-{index}{current}" {geometry} data-series="{escape(series.name)}" '
            f'data-label="{escape(label)}" data-value="{_data_value(value)}">'
            f"<title>{escape(label)}: {escape(chart.format(value))} {escape(series.name)}</title></{tag}>"
        )


def _svg(chart: Chart, kind: str, body: list[str]) -> str:
    marked = " marked" if chart.highlight is not None else ""
    return (
        f'<svg class="{kind}{marked}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(chart.summary())}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(body)
        + "</svg>"
    )


def _bars(chart: Chart) -> str:
    frame = _Frame.of(chart)
    body = frame.axes()
    group = min(frame.width * 0.8, MAX_BAR * len(chart.series))
    inner = group / len(chart.series)
    for index, series in enumerate(chart.series):
        for i, value in enumerate(series.values):
            x = frame.x(i) - group / 2 + index * inner
            y = frame.y(value)
            geometry = (
                f'x="{_n(x)}" y="{_n(y)}" width="{_n(max(inner - 0.5, 0.5))}" height="{_n(frame.y(0) - y)}"'
            )
            body.append(frame.mark("rect", index, i, geometry))
    return _svg(chart, "bars", body)


def _line(chart: Chart) -> str:
    frame = _Frame.of(chart)
    body = frame.axes()
    for index, series in enumerate(chart.series):
        points = [(frame.x(i), frame.y(v)) for i, v in enumerate(series.values)]
        path = " ".join(f"{_n(x)},{_n(y)}" for x, y in points)
        body.append(f'<polyline class="line series-{index}" points="{path}"/>')
        radius = 3.5 if len(points) <= 60 else 2
        body.extend(
            frame.mark("circle", index, i, f'cx="{_n(x)}" cy="{_n(y)}" r="{radius}"')
            for i, (x, y) in enumerate(points)
        )
    return _svg(chart, "line", body)


def _figure(chart: Chart, svg: str, caption: str) -> Markup:
    legend = "".join(
        f'<li><span class="swatch series-{i}"></span>{escape(s.name)}</li>'
        for i, s in enumerate(chart.series)
    )
    head = "".join(f'<th scope="col">{escape(s.name)}</th>' for s in chart.series)
    rows = "".join(
        f'<tr><th scope="row">{escape(label)}</th>'
        + "".join(f'<td class="num">{escape(chart.format(s.values[i]))}</td>' for s in chart.series)
        + "</tr>"
        for i, label in enumerate(chart.labels)
    )
    note = f'<p class="muted">{escape(caption)}</p>' if caption else ""
    return Markup(
        f'<figure class="chart" data-chart="{escape(chart.key)}"><figcaption>{escape(chart.title)}</figcaption>'
        f'{svg}<ul class="legend">{legend}</ul>{note}'
        f"<details><summary>The numbers</summary><table><thead><tr><th></th>{head}</tr></thead>"
        f"<tbody>{rows}</tbody></table></details></figure>"
    )


def bar_chart(chart: Chart, caption: str = "") -> Markup:
    """``chart`` as bars (several series: side by side in each slot), in a figure."""
    return _figure(chart, _bars(chart), caption)


def line_chart(chart: Chart, caption: str = "") -> Markup:
    """``chart`` as lines through points, in a figure."""
    return _figure(chart, _line(chart), caption)
