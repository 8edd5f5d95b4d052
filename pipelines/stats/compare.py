"""Comparison mode: what changed between two builds (a rerun, a filter change, a new corpus).

Owns: compare.json, the flat list of B - A deltas of headline figures and of every breakdown
(hours by corpus / language / task, samples by stage and task, quarantine by reason, shards per
stage) and of the eval figures (`eval[<shards>|<stage>].<task>.<metric>`, the shard directory
relative to each build, the latest step of a stage where several were evaluated). The report draws both builds itself (sections.py); this is the machine-readable side.
Must not: compute statistics from tables.
"""

from __future__ import annotations

from typing import Any

from pipelines.stats.evals import shards_key
from pipelines.stats.report import value_at

COMPARE_VERSION = 1

HEADLINE = (
    "recordings.count",
    "recordings.hours",
    "recordings.bytes",
    "recordings.duplicates.count",
    "recordings.duplicates.hours",
    "segments.count",
    "segments.hours",
    "quarantine.count",
    "conversations.recordings",
    "conversations.hours",
    "conversations.turns",
    "conversations.turns_per_minute.mean",
    "conversations.gap_s.quantiles.p50",
    "conversations.overlap_s.quantiles.p50",
    "conversations.events.backchannel_per_minute",
    "samples.count",
    "samples.hours",
    "recordings.duration_s.quantiles.p50",
    "recordings.snr_db.quantiles.p50",
    "recordings.rms_dbfs.quantiles.p50",
    "segments.duration_s.quantiles.p50",
)

BREAKDOWNS = (
    "recordings.by.corpus",
    "recordings.by.language",
    "recordings.by.task",
    "segments.by.corpus",
    "segments.by.language",
    "samples.by.stage",
    "samples.by.task",
)

# Per shard stage; each is in both shapes of a stage (with or without `per_shard`), so a build
# of 40 shards compares with one of 250k.
SHARD_FIGURES = (
    "shards",
    "samples",
    "hours",
    "bytes",
    "speech_tokens_per_s",
    "spread.samples.cv",
    "spread.hours.cv",
    *(
        f"per_shard_dist.{metric}.quantiles.{q}"
        for metric in ("samples", "hours", "bytes")
        for q in ("p05", "p50", "p95")
    ),
)


def _row(metric: str, a: Any, b: Any) -> dict[str, Any]:
    numeric = isinstance(a, int | float) and isinstance(b, int | float)
    delta = round(b - a, 6) if numeric else None
    relative = round((b - a) / a, 6) if numeric and a else None
    return {"metric": metric, "a": a, "b": b, "delta": delta, "relative": relative}


def _reasons(stats: dict[str, Any]) -> dict[str, int]:
    return {
        f"{r['step']}:{r['reason_code']}": r["count"]
        for r in value_at(stats, "quarantine.by_reason") or []
    }


def _eval_figures(stats: dict[str, Any]) -> dict[str, float]:
    """Every eval figure of a build by a name both builds share; entries come ordered by step
    (pipelines/stats/evals.py), so a stage's latest evaluated step wins."""
    out = {}
    for entry in stats.get("eval") or []:
        where = shards_key(entry, stats["inputs"]["root"])
        for task, figures in entry["tasks"].items():
            for metric, value in figures["metrics"].items():
                out[f"eval[{where}|{entry['stage']}].{task}.{metric}"] = value
    return out


def compare_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Every delta B - A, as rows {metric, a, b, delta, relative}; a missing side is null."""
    rows = [_row(path, value_at(a, path), value_at(b, path)) for path in HEADLINE]
    for path in BREAKDOWNS:
        left = {r["key"]: r for r in value_at(a, path) or []}
        right = {r["key"]: r for r in value_at(b, path) or []}
        for key in sorted(left.keys() | right.keys()):
            for field in ("count", "hours"):
                rows.append(
                    _row(
                        f"{path}[{key}].{field}",
                        (left.get(key) or {}).get(field),
                        (right.get(key) or {}).get(field),
                    )
                )
    reasons_a, reasons_b = _reasons(a), _reasons(b)
    for key in sorted(reasons_a.keys() | reasons_b.keys()):
        rows.append(_row(f"quarantine[{key}].count", reasons_a.get(key, 0), reasons_b.get(key, 0)))
    for stage in sorted((a.get("shards") or {}).keys() | (b.get("shards") or {}).keys()):
        for field in SHARD_FIGURES:
            path = f"shards.{stage}.{field}"
            rows.append(_row(path, value_at(a, path), value_at(b, path)))
    eval_a, eval_b = _eval_figures(a), _eval_figures(b)
    for name in sorted(eval_a.keys() | eval_b.keys()):
        rows.append(_row(name, eval_a.get(name), eval_b.get(name)))
    changed = [r for r in rows if r["a"] != r["b"]]
    return {
        "schema": "minmo.stats.compare",
        "version": COMPARE_VERSION,
        "a": a["inputs"]["root"],
        "b": b["inputs"]["root"],
        "changed": len(changed),
        "deltas": rows,
    }
