"""The stats step: discover what DIR holds, aggregate it, write stats.json and report.html.

    minmo stats DIR [--out REPORT_DIR]       one build
    minmo stats A B [--out REPORT_DIR]       two builds side by side, with deltas

Owns: the order of the sections, the output files (atomic) and the step summary.
Must not: hold any table in memory: every figure comes from a DuckDB aggregation
(pipelines/stats/tables.py, shard_stats.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb

from minmo.config import ConfigError, StorageOptions, storage_options_field
from minmo.io.atomic import sweep_temp_files
from pipelines.build import BuildDir
from pipelines.stats import shard_stats, tables
from pipelines.stats.evals import eval_section
from pipelines.stats.sources import connect, discover, register_parquet
from schemas.stats import STATS_VERSION, validate_stats


@dataclass
class StatsConfig:
    """How the stats step runs. Every field is optional in a job spec's `stats:` section."""

    out: str | None = None
    """Where stats.json and report.html go; default DIR/stats. On a multi-node Ray cluster it
    must be a path every node sees (s3://, a shared mount), like the shards it reads: the shard
    tasks write their `_samples/` files under it wherever they run."""
    memory_limit: str = "1GB"
    """DuckDB's buffer cap; larger aggregations spill to disk."""
    threads: int | None = None
    """DuckDB threads; default: all cores."""
    workers: int | None = None
    """Shard-metadata tasks (one Ray task per shard) in flight at once; default: two per CPU of
    the Ray instance or cluster (RAY_ADDRESS), so the reading spreads over every node."""
    max_shard_rows: int = 1000
    """Past this many shards in a stage, stats.json keeps per-shard distributions and the worst
    shards instead of a row per shard (250k rows would make a 100 MB file nobody reads)."""
    worst_shards: int = 10
    """Shards kept per "worst" criterion (shard_stats.WORST)."""
    title: str | None = None
    """The report's title; default: the input's path."""
    eval: list[str] = field(default_factory=list)
    """eval.json files (`minmo eval`'s, paths or URIs) to show beside the ones the input holds
    under DIR/eval/ (a job's `eval` step writes DIR/eval/<stage>/eval.json)."""
    storage_options: StorageOptions = storage_options_field()

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError("stats.workers must be >= 1 (or left out for two per Ray CPU)")
        if self.max_shard_rows < 0 or self.worst_shards < 0:
            raise ConfigError("stats.max_shard_rows and stats.worst_shards must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("stats.threads must be >= 1 (or left out for all cores)")


def compute_stats(
    uri: str, config: StatsConfig | None = None, progress: bool = True
) -> dict[str, Any]:
    """Every section of stats.json for the tables and shards under `uri` (schemas/stats.py)."""
    config = config or StatsConfig()
    sources = discover(uri, **config.storage_options)
    out = BuildDir(config.out or f"{uri.rstrip('/')}/stats", **config.storage_options)
    # a killed run's half-written files: the output folder's own, and its samples cache
    sweep_temp_files(out.fs, out.root)
    sweep_temp_files(out.fs, out.path("_samples"), recursive=True)
    has = set(sources.tables)
    errors: list[dict[str, str]] = []
    sample_files: list[str] = []
    if sources.shard_dirs:
        sample_files, unreadable = shard_stats.extract_samples(
            sources, out, workers=config.workers, progress=progress
        )
        errors += [{"section": "samples", "source": src, "error": e} for src, e in unreadable]
    con = connect(sources, config.memory_limit, config.threads, errors)
    has -= {e["section"] for e in errors}  # tables that could not be opened
    if sample_files:
        register_parquet(con, "samples", sample_files, out.fs, shard_stats.SAMPLE_SCHEMA)

    def section(name: str, make: Callable[[], Any], needs: str | None, empty: Any = None) -> Any:
        """One section, or `empty` when its input is absent. A section that fails (a corrupt
        Parquet file, an unreadable index.json) is recorded in `errors` and the rest go on:
        one bad file must not cost the analyst the whole report."""
        if needs is not None and needs not in has:
            return empty
        t0 = time.perf_counter()
        try:
            value = make()
        except (duckdb.Error, OSError, ValueError, KeyError, TypeError) as exc:
            errors.append({"section": name, "error": f"{type(exc).__name__}: {exc}"})
            return empty
        if progress:
            print(f"stats: {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return value

    if sources.shard_dirs:
        has.add("shards")
    if sample_files:
        has.add("samples")
    stats = {
        "schema": "minmo.stats",
        "version": STATS_VERSION,
        "inputs": {
            **sources.describe(),
            "rows": section("rows", lambda: _row_counts(con, has & set(sources.tables)), None, {}),
        },
        "recordings": section("recordings", lambda: tables.recordings(con, has), "recordings"),
        "segments": section("segments", lambda: tables.segments(con, has), "segments"),
        "quarantine": section(
            "quarantine",
            lambda: tables.quarantine(con),
            "quarantine",
            {"count": 0, "by_reason": []},
        ),
        "conversations": section("conversations", lambda: tables.conversations(con, has), "turns"),
        "samples": section("samples", lambda: shard_stats.samples(con), "samples"),
        "shards": section(
            "shards",
            lambda: shard_stats.shard_balance(sources, config.max_shard_rows, config.worst_shards),
            "shards",
            {},
        ),
        "eval": eval_section(sources.fs, sources.root, config.eval, config.storage_options, errors),
        "config": {k: v for k, v in asdict(config).items() if k != "storage_options"},
    }
    stats["errors"] = errors  # no run time here: a rerun must give the same bytes (dist.py)
    con.close()
    return validate_stats(stats)


def _row_counts(con: Any, has: set[str]) -> dict[str, int]:
    return {
        name: int(con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]) for name in sorted(has)
    }
