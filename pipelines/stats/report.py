"""The analysts' report: one self-contained HTML file (inline CSS and SVG, no script, no link).

One build or two: with two, every table gains the B - A delta and every plot draws both builds.
Each plot is a `<figure class="plot">` with an inline `<svg>` and a `<figcaption>` stating the
figure it shows; a section whose input the build lacks says so instead of drawing an empty plot.
Must not: compute statistics (it reads stats.json dicts) or reference anything outside the file.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

from pipelines.stats import plots

Build = tuple[str, dict[str, Any]]  # (label, stats.json)


def fmt_number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:,.{digits}g}"
    return str(value)


def fmt_delta(a: Any, b: Any) -> str:
    """B - A as the tables show it: signed, with the relative change when A is not 0."""
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return "–"
    diff = b - a
    pct = f" ({diff / a:+.1%})" if a else ""
    sign = "+" if diff > 0 else ""
    return f"{sign}{fmt_number(diff) if isinstance(diff, float) else f'{diff:,}'}{pct}"


def value_at(stats: dict[str, Any], path: str) -> Any:
    value: Any = stats
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class Report:
    """Accumulates sections; `html()` returns the page."""

    def __init__(self, builds: Sequence[Build], title: str) -> None:
        self.builds = list(builds)
        self.title = title
        self.parts: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self.n_figures = 0

    @property
    def compare(self) -> bool:
        return len(self.builds) > 1

    # ---- building blocks ------------------------------------------------------------------

    def section(self, anchor: str, title: str, intro: str = "") -> None:
        self.toc.append((anchor, title))
        self.parts.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>')
        if intro:
            self.parts.append(f"<p>{intro}</p>")

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def warn(self, text: str) -> None:
        self.parts.append(f'<p class="warn">{html.escape(text)}</p>')

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join(
            "<tr>"
            + "".join(
                f"<td{'' if isinstance(c, int | float) or c is None else ' class=t'}>"
                f"{html.escape(fmt_number(c))}</td>"
                for c in row
            )
            + "</tr>"
            for row in rows
        )
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, anchor: str, svg: str, caption: str) -> None:
        self.n_figures += 1
        self.parts.append(
            f'<figure class="plot" id="fig-{anchor}">{svg}<figcaption><b>Figure '
            f"{self.n_figures}.</b> {html.escape(caption)}</figcaption></figure>"
        )

    def per_build(self, describe: Callable[[dict[str, Any]], str]) -> str:
        """'text' for one build, 'A: text; B: text' for two."""
        if not self.compare:
            return describe(self.builds[0][1])
        return "; ".join(f"{label}: {describe(s)}" for label, s in self.builds)

    def compare_rows(self, metrics: Sequence[tuple[str, str | Callable[[dict], Any]]]) -> None:
        """A metric table: one column per build, plus B - A when comparing. A metric is a
        dotted path into stats.json or a function of it (derived figures)."""
        headers = ["metric", *(label for label, _ in self.builds)]
        if self.compare:
            headers.append("delta (B - A)")
        rows = []
        for name, path in metrics:
            values = [path(s) if callable(path) else value_at(s, path) for _, s in self.builds]
            if all(v is None for v in values):
                continue
            rows.append(
                [name, *values, *([fmt_delta(values[0], values[1])] if self.compare else [])]
            )
        self.table(headers, rows)

    # ---- plots over builds ----------------------------------------------------------------

    def keyed_series(
        self, values_of: Callable[[dict[str, Any]], dict[str, Any]], keys: Sequence[str] = ()
    ) -> tuple[list[str], list[tuple[str, list[float]]]]:
        """Categories (`keys`, or every key of any build in order of first appearance) and one
        series per build over them, 0 where a build has no value."""
        per_build = [values_of(s) for _, s in self.builds]
        names = list(keys) or list(dict.fromkeys(k for values in per_build for k in values))
        series = [
            (label, [values.get(k) or 0 for k in names])
            for (label, _), values in zip(self.builds, per_build, strict=True)
        ]
        return names, series

    def breakdown_plot(self, anchor: str, path: str, what: str, unit_of: str = "hours") -> None:
        """Bars of `hours` (or `count`) per key of a breakdown list, across builds."""
        keys, series = self.keyed_series(
            lambda s: {r["key"]: r[unit_of] for r in value_at(s, path) or []}
        )
        if not keys:
            return
        keys = keys[:30]
        series = [(label, values[:30]) for label, values in series]
        unit = "audio hours (h)" if unit_of == "hours" else "count"

        def totals(s: dict[str, Any]) -> str:
            rows = value_at(s, path) or []
            total = fmt_number(sum(r[unit_of] for r in rows))
            return f"{len(rows)} values, {total}" + (" h" if unit_of == "hours" else "")

        self.figure(
            anchor,
            plots.bars(anchor, keys, series, unit, horizontal=len(keys) > 6),
            f"{what} ({self.per_build(totals)}).",
        )

    def dist_plot(
        self,
        anchor: str,
        path: str,
        what: str,
        xlabel: str,
        ylabel: str = "count",
        weight: str = "counts",
        group: tuple[str, str] | None = None,
        trim: bool = False,
    ) -> None:
        """A histogram of a distribution (or of one group of it) across builds. `trim` drops
        the bins at either end that are empty in every build (wide fixed grids, such as the
        per-shard R10 bins, would otherwise draw mostly empty axes)."""
        dists = [value_at(s, path) for _, s in self.builds]
        if all(d is None for d in dists):
            return
        ref = next(d for d in dists if d is not None)

        def pick(d: dict[str, Any] | None) -> dict[str, Any] | None:
            if d is None or group is None:
                return d
            return (d.get("by", {}).get(group[0]) or {}).get(group[1])

        chosen = [pick(d) for d in dists]
        if all(c is None or c["n"] == 0 for c in chosen):
            return
        edges = list(ref["edges"])
        n_bins = len(edges) - 1
        series = [
            (label, list((c or {}).get(weight) or [0] * n_bins))
            for (label, _), c in zip(self.builds, chosen, strict=True)
        ]
        used = [i for i in range(n_bins) if any(values[i] for _, values in series)]
        if trim and used:
            first, last = used[0], used[-1]
            edges = edges[first : last + 2]
            series = [(label, values[first : last + 1]) for label, values in series]

        def describe(c: dict[str, Any] | None) -> str:
            if not c or not c["n"]:
                return "none"
            q = c["quantiles"]
            out_of = c["underflow"] + c["overflow"]
            tail = f", {out_of:,} outside the axis" if out_of else ""
            nulls = f", {c['nulls']:,} without a value" if c.get("nulls") else ""
            return (
                f"n = {c['n']:,}, median {fmt_number(q['p50'])} {ref['unit']}, "
                f"5-95 % {fmt_number(q['p05'])} to {fmt_number(q['p95'])}, mean {fmt_number(c['mean'])}{tail}{nulls}"
            )

        caption = "; ".join(
            f"{label}: {describe(c)}" if self.compare else describe(c)
            for (label, _), c in zip(self.builds, chosen, strict=True)
        )
        self.figure(
            anchor,
            plots.histogram(
                anchor,
                edges,
                series,
                f"{xlabel} ({ref['unit']})",
                ylabel,
                categorical=bool(ref.get("log_x")) or "ratio" in path,
                unit=ref["unit"],
            ),
            f"{what}: {caption}.",
        )

    def html(self) -> str:
        toc = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in self.toc)
        labels = ", ".join(
            f"<b>{html.escape(label)}</b> = <code>{html.escape(s['inputs']['root'])}</code>"
            for label, s in self.builds
        )
        return (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1><p class='meta'>{labels}. "
            f"minmo stats v{self.builds[0][1]['version']}; {self.n_figures} figures.</p>"
            f"<nav><ol>{toc}</ol></nav>{''.join(self.parts)}</body></html>\n"
        )


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1440px;
color:#222;line-height:1.45;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.meta{color:#555}nav ol{columns:2;font-size:.95em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right;vertical-align:top}
th{background:#f4f6f8}td:first-child,th:first-child,td.t{text-align:left}
td{max-width:28em;overflow-wrap:anywhere}
figure.plot{display:inline-block;vertical-align:top;box-sizing:border-box;width:calc(50% - 1em);
margin:.5em .5em .5em 0;padding:.5em;border:1px solid #eee;border-radius:4px}
figure.plot svg{width:100%;height:auto;display:block}
@media (max-width:900px){figure.plot{width:100%}}
figcaption{font-size:.9em;color:#333;margin-top:.4em}.note{color:#666;font-style:italic}
.warn{background:#fdecea;border-left:4px solid #c0392b;padding:.5em .8em}
"""
