"""Distributions computed inside DuckDB: fixed-edge histograms, moments and approximate quantiles.

Owns: the SQL for one numeric column's distribution, overall and per group, the fixed bin
edges of every metric the report shows, and the order-independent sum (`exact_sum`). Edges are
fixed (not data-driven) so that two builds' histograms line up bin for bin in comparison mode.
Quantiles use DuckDB's `approx_quantile` (a t-digest: bounded memory at any row count; exact
enough for a report, within a bin or two).

Reproducible: stats.json is diffed by analysts, so a rerun on the same build must give the same
bytes. DuckDB adds a column's rows in whatever order its threads finish, which moves a float
sum's last bits and a t-digest's merges; so every sum and mean that reaches stats.json goes
through `exact_sum` (an integer sum of fixed-point values), and the moments query (with its
quantiles) runs on one thread, which feeds rows in file order. Everything is rounded (6
decimals) after that. One thread is not enough for a sum: a build resumed after a crash may
hold the same rows in other part files, in another order (the chaos bench saw a `sum` differ
in its last decimal that way), and a float sum then rounds the other way.
Must not: pull rows into Python; every function returns only aggregates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

QUANTILES = (0.05, 0.5, 0.95)
# `exact_sum`'s fixed point: values are summed in units of 1e-9, far below the 6 decimals kept.
SUM_SCALE = 10**9


@dataclass(frozen=True)
class Bins:
    """A metric's histogram edges and unit; bin i is [edges[i], edges[i+1])."""

    unit: str
    edges: tuple[float, ...]
    log_x: bool = False  # the report draws this metric on a log axis


DURATION_S = Bins(
    "s",
    (0.0, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 25, 30, 45, 60, 120, 300, 600, 1800, 3600, 7200),
    log_x=True,
)
DBFS = Bins("dBFS", tuple(float(v) for v in range(-90, 10, 5)))  # 0 dBFS falls in [0, 5)
CLIPPING_RATIO = Bins("fraction of samples", (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0 + 1e-9))
SNR_DB = Bins("dB", tuple(float(v) for v in range(-10, 65, 5)))
RATIO = Bins("fraction", tuple(round(i * 0.05, 2) for i in range(20)) + (1.0 + 1e-9,))
TURNS_PER_MIN = Bins("turns/min", tuple(float(v) for v in range(0, 62, 2)))
FLOOR_TRANSFER_S = Bins("s", tuple(round(-3.0 + 0.2 * i, 1) for i in range(31)))
GAP_S = Bins("s", tuple(round(0.1 * i, 1) for i in range(31)))

# Renard's R10 preferred numbers: ten bins per decade, each about 26 % wide, with round edges.
R10 = (1.0, 1.25, 1.6, 2.0, 2.5, 3.15, 4.0, 5.0, 6.3, 8.0)


def r10(first_exp: int, last_exp: int) -> tuple[float, ...]:
    """Edges 10**first_exp ... 10**last_exp, ten per decade (R10). Per-shard figures span
    decades (a 10-sample leftover beside 2,000-sample shards), and bins relative to the value
    still resolve a spread of a few percent around any fill."""
    inner = (round(m * 10.0**e, 12) for e in range(first_exp, last_exp) for m in R10)
    return (*inner, round(10.0**last_exp, 12))


SHARD_SAMPLES = Bins("samples", r10(0, 6), log_x=True)
SHARD_HOURS = Bins("h", r10(-4, 3), log_x=True)
SHARD_BYTES = Bins("bytes", r10(3, 12), log_x=True)


def exact_sum(expr: str) -> str:
    """SQL for the sum of `expr` (a number) as a DOUBLE that does not depend on the order the
    rows are added in: each value rounded to 1/SUM_SCALE and summed as a HUGEINT (exact). Values
    that are not finite are left out (ingest quarantines them)."""
    value = f"CAST(({expr}) AS DOUBLE)"
    scaled = f"CAST(round({value} * {SUM_SCALE}) AS HUGEINT)"
    return f"(sum(CASE WHEN isfinite({value}) THEN {scaled} END) / {SUM_SCALE}.0)"


@contextlib.contextmanager
def one_thread(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run the enclosed queries on one DuckDB thread: rows then arrive in file order, so an
    order-sensitive aggregate (approx_quantile's t-digest) gives the same answer every run."""
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    con.execute("SET threads = 1")
    try:
        yield
    finally:
        con.execute(f"SET threads = {int(threads)}")


def _bin_case(column: str, edges: tuple[float, ...]) -> str:
    """SQL giving the bin of `column`: -1 below the first edge, len(edges)-1 at or above the last."""
    whens = " ".join(f"WHEN {column} < {e!r} THEN {i - 1}" for i, e in enumerate(edges))
    return f"CASE {whens} ELSE {len(edges) - 1} END"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def distribution(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    column: str,
    bins: Bins,
    *,
    weight: str | None = None,
    group_by: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The distribution of `column` (a SQL expression) over `relation` (a table name or a
    parenthesised subquery), with `by` holding the same per value of each `group_by` column.

    `weight`, when given, is summed per bin as `hours` (e.g. duration_s / 3600 per row), so a
    duration histogram shows both how many items and how much audio fall in each bin.
    """
    n_bins = len(bins.edges) - 1
    whole = _groups(con, relation, column, bins, weight, None).get("*")
    return {
        "unit": bins.unit,
        "edges": list(bins.edges),
        "log_x": bins.log_x,
        **(whole or _empty(n_bins, weight is not None)),
        "by": {g: _groups(con, relation, column, bins, weight, g) for g in group_by},
    }


def _groups(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    column: str,
    bins: Bins,
    weight: str | None,
    group: str | None,
) -> dict[str, dict[str, Any]]:
    """{group value: distribution without edges}; the one value is "*" when `group` is None."""
    key = f"CAST({_q(group)} AS VARCHAR)" if group else "'*'"
    qs = ", ".join(repr(q) for q in QUANTILES)
    w = f"({weight})" if weight else "0"
    with one_thread(con):
        moments = con.execute(
            f"""
            SELECT {key} AS k, count(*) FILTER (WHERE __v IS NOT NULL),
                   count(*) FILTER (WHERE __v IS NULL), {exact_sum("__v")},
                   count(*) FILTER (WHERE isfinite(__v)), min(__v), max(__v),
                   approx_quantile(__v, [{qs}])
            FROM (SELECT CAST(({column}) AS DOUBLE) AS __v, * FROM {relation}) GROUP BY k
            """
        ).fetchall()
    hist = con.execute(
        f"""
        SELECT {key} AS k, {_bin_case("__v", bins.edges)} AS b, count(*), {exact_sum("__w")}
        FROM (SELECT CAST(({column}) AS DOUBLE) AS __v, CAST({w} AS DOUBLE) AS __w, *
              FROM {relation}) WHERE __v IS NOT NULL AND NOT isnan(__v) GROUP BY k, b
        """
    ).fetchall()
    n_bins = len(bins.edges) - 1
    groups: dict[str, dict[str, Any]] = {}
    for k, n, nulls, total, finite, lo, hi, quant in moments:
        mean = total / finite if finite else None  # exact sum over the values it adds
        groups[_name(k)] = {
            **_empty(n_bins, weight is not None),
            "n": int(n),
            "nulls": int(nulls),
            "sum": _num(total),
            "mean": _num(mean),
            "min": _num(lo),
            "max": _num(hi),
            "quantiles": {
                f"p{round(q * 100):02d}": _num(v)
                for q, v in zip(QUANTILES, quant or [None] * len(QUANTILES), strict=True)
            },
        }
    for k, b, n, wsum in hist:
        g = groups[_name(k)]
        if b < 0:
            g["underflow"] += int(n)
        elif b >= n_bins:
            g["overflow"] += int(n)
        else:
            g["counts"][b] = int(n)
            if weight:
                g["hours"][b] = round(float(wsum or 0.0), 6)
    return groups


def _name(key: str | None) -> str:
    return "null" if key is None else key


def _empty(n_bins: int, weighted: bool) -> dict[str, Any]:
    """A distribution of nothing: the shape every group starts from."""
    return {
        "n": 0,
        "nulls": 0,
        "sum": None,
        "mean": None,
        "min": None,
        "max": None,
        "quantiles": {f"p{round(q * 100):02d}": None for q in QUANTILES},
        "counts": [0] * n_bins,
        "underflow": 0,
        "overflow": 0,
        **({"hours": [0.0] * n_bins} if weighted else {}),
    }


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if value != value else round(value, 6)  # NaN -> null: JSON has no NaN
