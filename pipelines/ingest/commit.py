"""Committing one ingest unit: what the driver does between "all its items are staged" and
its ledger marker, and the probe that keeps a unit from re-ingesting what the build holds.

Owns: the committed-source check, duplicate marking (the listing-order rule), the source keys
of staged quarantine rows, and a staged unit's counts. Every function takes one unit (or its
staged directory) and costs O(unit): the build's committed tables are never scanned, only the
commit index (pipelines/ingest/commit_index.py) is probed. Must not: run Ray or plan units
(pipelines/ingest/run.py does).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from minmo.io.parquet import write_table
from pipelines.build import BuildDir
from pipelines.ingest.commit_index import CommitIndex
from pipelines.ingest.items import source_key
from schemas import QUARANTINE, RECORDINGS


def unit_stats(build: BuildDir, staging: str) -> dict[str, Any]:
    """Counts of a staged unit, read from its (small, metadata-only) Parquet files."""
    stats: dict[str, Any] = {"recordings": 0, "segments": 0, "audio_s": 0.0, "quarantined": {}}
    recs = build.files(f"{staging}/recordings", ".parquet")
    if recs:
        durations = pads.dataset(recs, filesystem=build.fs).to_table(columns=["duration_s"])
        stats["recordings"] = durations.num_rows
        stats["audio_s"] = float(pc.sum(durations.column("duration_s")).as_py() or 0.0)
    for path in build.files(f"{staging}/segments", ".parquet"):
        stats["segments"] += pq.ParquetFile(build.fs.open_input_file(path)).metadata.num_rows
    rejects = build.files(f"{staging}/quarantine", ".parquet")
    if rejects:
        reasons = pads.dataset(rejects, filesystem=build.fs).to_table(columns=["reason_code"])
        stats["quarantined"] = dict(Counter(reasons.column("reason_code").to_pylist()))
    return stats


def reject_key(row: dict[str, Any]) -> str:
    """A listing refusal's source key (the layout readers set it; a URI-only key otherwise)."""
    return row.get("source_key") or source_key("", None, row["source_uri"])


def committed_sources(index: CommitIndex, keys: list[str]) -> set[str]:
    """Which of these source keys the build already holds (in recordings or quarantine): a
    guard so that a source whose listing changed between runs is still never ingested twice.
    A probe of the commit index: its cost follows the unit, not the build."""
    return index.sources_seen(keys) if keys else set()


def fill_source_keys(build: BuildDir, staged_dir: str, key_of: dict[str, str]) -> None:
    """Give a unit's staged quarantine rows their source key (the decode and VAD stages know
    only the URI), so that a refused source is recognised wherever its corpus moves."""
    for path in build.files(staged_dir, ".parquet"):
        table = pq.read_table(path, filesystem=build.fs)
        keys = table.column("source_key").to_pylist()
        if all(keys):
            continue
        uris = table.column("source_uri").to_pylist()
        filled = [k or key_of.get(u) for k, u in zip(keys, uris, strict=True)]
        column = pa.array(filled, pa.string())
        table = table.set_column(table.schema.get_field_index("source_key"), "source_key", column)
        write_table(build.fs, path, QUARANTINE.validate(table))


def mark_duplicates(
    build: BuildDir, index: CommitIndex, staged_dir: str, order: dict[str, int]
) -> tuple[int, dict[str, str]]:
    """Fill `dup_of` in a unit's staged recordings: the earlier recording with the same decoded
    content. "Earlier" is listing order: committed units first (the commit index's originals,
    probed for this unit's hashes only), then earlier items of this unit. Returns the duplicate
    count and {content_sha1: recording_id} of the unit's new originals (for the index)."""
    staged = build.files(staged_dir, ".parquet")
    if not staged:
        return 0, {}
    mine = (
        pads.dataset(staged, filesystem=build.fs, format="parquet")
        .to_table(columns=["recording_id", "source_uri", "content_sha1"])
        .to_pylist()
    )
    mine.sort(key=lambda r: (order.get(r["source_uri"], 0), r["recording_id"]))
    first = index.originals(r["content_sha1"] for r in mine)
    committed = set(first)
    dup_of = {}
    for row in mine:
        original = first.setdefault(row["content_sha1"], row["recording_id"])
        if original != row["recording_id"]:
            dup_of[row["recording_id"]] = original
    if dup_of:
        for path in staged:
            table = pq.read_table(path, filesystem=build.fs)
            ids = table.column("recording_id").to_pylist()
            if any(i in dup_of for i in ids):
                column = pa.array([dup_of.get(i) for i in ids], pa.string())
                table = table.set_column(table.schema.get_field_index("dup_of"), "dup_of", column)
                write_table(build.fs, path, RECORDINGS.validate(table))
    originals = {sha: rid for sha, rid in first.items() if sha not in committed}
    return len(dup_of), originals
