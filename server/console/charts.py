"""Charts as inline SVG, drawn on the server: no script, nothing fetched, readable by print.

They draw published counts only (`schemas.console.stats.Count`): a bar as
tall as the exact count would give away what "<5" hides, so a suppressed
value is drawn as a dashed outline of the whole 0–5 band it lies in, the
same for every suppressed value, with "<5" as its tooltip. Every label is
escaped (categories and org units are the office's own words).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

from schemas.console.stats import SUPPRESSED, WITHHELD, Count, Row, Week

Translate = Callable[[str], str]
INK, MUTED, LINE, RECEIVED, RESOLVED = "#1f2933", "#616e7c", "#d9e2ec", "#4a6fa5", "#2f7d32"
BAND = 5  # a suppressed count lies somewhere in 0–4: drawn as the band up to 5


def nice_ceiling(value: float) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (at least `BAND`)."""
    value = max(value, BAND)
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return int(step * power)
    return int(10 * power)  # pragma: no cover - the loop always returns


def _number(value: Count) -> float | None:
    return None if isinstance(value, str) else float(value)


def shown(value: Count, _: Translate) -> str:
    """A published count as a label: the number, "<5", or "withheld" in the user's words."""
    return _("withheld") if value == WITHHELD else str(value)


def _withheld_mark(x: float, y: float, tip: str) -> str:
    """Where a withheld figure would be: a dash on the axis, nothing drawn to scale."""
    return (
        f'<text x="{x:.1f}" y="{y - 3:.1f}" text-anchor="middle" fill="{MUTED}">–'
        f"<title>{tip}</title></text>"
    )


def _svg(width: int, height: int, label: str, body: list[str]) -> Markup:
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}"'
        f' width="100%" role="img" aria-label="{escape(label)}"'
        ' style="max-width:100%;height:auto;font:12px system-ui,sans-serif">'
        f"<title>{escape(label)}</title>{''.join(body)}</svg>"
    )


def weekly(weeks: Sequence[Week], _: Translate) -> Markup:
    """Cases received (bars) and resolved (line) per week."""
    width, height = 760, 240
    left, right, top, bottom = 44, 12, 28, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [_number(v) for w in weeks for v in (w.received, w.resolved)]
    ceiling = nice_ceiling(max((v for v in values if v is not None), default=0))
    slot = plot_w / max(len(weeks), 1)
    # Marked outside the f-strings below, where message extraction cannot see them.
    received_word, resolved_word = escape(_("Received")), escape(_("Resolved"))
    fewer_word = escape(_("fewer than 5"))

    def y(value: float) -> float:
        return top + plot_h - value / ceiling * plot_h

    body = []
    for tick in (0, ceiling // 2, ceiling) if ceiling % 2 == 0 else (0, ceiling):
        body.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"'
            f' stroke="{LINE}"/><text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end"'
            f' fill="{MUTED}">{tick}</text>'
        )
    points: list[tuple[float, float] | None] = []
    for n, week in enumerate(weeks):
        x = left + n * slot
        received = _number(week.received)
        tip = f"{escape(week.start)} · {received_word}: {escape(shown(week.received, _))}"
        if week.received == WITHHELD:
            body.append(_withheld_mark(x + slot / 2, y(0), tip))
        elif received is None:
            body.append(
                f'<rect x="{x + slot * 0.15:.1f}" y="{y(BAND):.1f}" width="{slot * 0.7:.1f}"'
                f' height="{y(0) - y(BAND):.1f}" fill="none" stroke="{RECEIVED}"'
                f' stroke-dasharray="3 2"><title>{tip}</title></rect>'
            )
        else:
            body.append(
                f'<rect x="{x + slot * 0.15:.1f}" y="{y(received):.1f}" width="{slot * 0.7:.1f}"'
                f' height="{y(0) - y(received):.1f}" fill="{RECEIVED}" fill-opacity="0.8">'
                f"<title>{tip}</title></rect>"
            )
        resolved = _number(week.resolved)
        points.append(None if resolved is None else (x + slot / 2, y(resolved)))
        if (n % 4 == 0 and n < len(weeks) - 2) or n == len(weeks) - 1:
            body.append(
                f'<text x="{x + slot / 2:.1f}" y="{height - bottom + 16}" text-anchor="middle"'
                f' fill="{MUTED}">{escape(week.start[5:])}</text>'
            )
    # The resolved line runs through published points only; a "<5" week breaks it
    # and shows as a hollow mark in the 0–5 band.
    run: list[str] = []
    for n, point in enumerate([*points, None]):
        if point is not None:
            run.append(f"{point[0]:.1f},{point[1]:.1f}")
            continue
        if run:
            body.append(
                f'<polyline points="{" ".join(run)}" fill="none" stroke="{RESOLVED}"'
                ' stroke-width="2"/>'
            )
            run = []
        if n < len(weeks) and weeks[n].resolved == SUPPRESSED:
            tip = f"{escape(weeks[n].start)} · {resolved_word}: {SUPPRESSED}"
            body.append(
                f'<circle cx="{left + n * slot + slot / 2:.1f}" cy="{y(BAND / 2):.1f}" r="3"'
                f' fill="#fff" stroke="{RESOLVED}"><title>{tip}</title></circle>'
            )
    for n, point in enumerate(points):
        if point is not None:
            tip = f"{escape(weeks[n].start)} · {resolved_word}: {weeks[n].resolved}"
            body.append(
                f'<circle cx="{point[0]:.1f}" cy="{point[1]:.1f}" r="3" fill="{RESOLVED}">'
                f"<title>{tip}</title></circle>"
            )
    body.append(
        f'<rect x="{left}" y="6" width="12" height="12" fill="{RECEIVED}"/>'
        f'<text x="{left + 16}" y="16" fill="{INK}">{received_word}</text>'
        f'<line x1="{left + 110}" x2="{left + 130}" y1="12" y2="12" stroke="{RESOLVED}"'
        f' stroke-width="2"/><text x="{left + 136}" y="16" fill="{INK}">'
        f"{resolved_word}</text>"
        f'<rect x="{left + 230}" y="6" width="12" height="12" fill="none" stroke="{RECEIVED}"'
        f' stroke-dasharray="3 2"/><text x="{left + 246}" y="16" fill="{INK}">'
        f"{fewer_word}</text>"
    )
    return _svg(width, height, _("Cases received and resolved per week"), body)


def bars(rows: Sequence[Row], label: str, empty: str, _: Translate) -> Markup:
    """Horizontal bars of the cases received, one a row (`empty` names a row without a key)."""
    row_h, left, right, top = 24, 200, 60, 6
    width = 760
    height = top * 2 + row_h * max(len(rows), 1)
    plot_w = width - left - right
    numbers = [_number(row.received) for row in rows]
    ceiling = nice_ceiling(max((v for v in numbers if v is not None), default=0))
    received_word = escape(_("Received"))  # marked outside the f-string, for extraction
    body = []
    for n, (row, value) in enumerate(zip(rows, numbers, strict=True)):
        y = top + n * row_h
        name = row.key or empty
        short = name if len(name) <= 28 else "…" + name[-27:]
        tip = f"{escape(name)} · {received_word}: {escape(shown(row.received, _))}"
        body.append(
            f'<text x="{left - 8}" y="{y + 16}" text-anchor="end" fill="{INK}">'
            f"<title>{escape(name)}</title>{escape(short)}</text>"
        )
        if row.received == WITHHELD:
            body.append(_withheld_mark(left + 6, y + 19, tip))
            continue
        drawn = BAND if value is None else value
        outline = ' fill="none" stroke-dasharray="3 2"' if value is None else ' fill-opacity="0.8"'
        fill = "" if value is None else f' fill="{RECEIVED}"'
        body.append(
            f'<rect x="{left}" y="{y + 4}" width="{drawn / ceiling * plot_w:.1f}"'
            f' height="{row_h - 8}" stroke="{RECEIVED}"{fill}{outline}><title>{tip}</title></rect>'
        )
        body.append(
            f'<text x="{left + drawn / ceiling * plot_w + 6:.1f}" y="{y + 16}" fill="{MUTED}">'
            f"{escape(str(row.received))}</text>"
        )
    return _svg(width, height, label, body)
