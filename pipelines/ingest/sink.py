"""Staged Parquet output of ingest workers: one batch of a unit's rows -> its staged tables.

Why no Ray Data writer: one worker batch feeds three tables (recordings, segments,
quarantine), and a unit of work must be committed only when all of its rows are written. The
worker that produced a batch writes it straight to the build's filesystem under
`<staging>/<unit>/<table>/<tag>.parquet` and returns only the item count; the driver commits a
unit once the counts returned for it account for every item (see pipelines/ingest/run.py).

The tag is the batch's first listing position, so a batch retried after a worker died
overwrites its own earlier (possibly partial) files instead of staging its rows twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from minmo.io.parquet import write_table
from schemas import QUARANTINE, RECORDINGS, SEGMENTS


@dataclass
class StagedRows:
    """The three tables' rows of one batch, as plain dicts (metadata only, never audio)."""

    recordings: list[dict[str, Any]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)

    def tables(self) -> dict[str, pa.Table]:
        return {
            "recordings": RECORDINGS.from_rows(self.recordings),
            "segments": SEGMENTS.from_rows(self.segments),
            "quarantine": QUARANTINE.from_rows(self.quarantine),
        }


def write_staged(fs: pafs.FileSystem, unit_dir: str, tag: str, rows: StagedRows) -> None:
    """Write a batch's non-empty tables as `<unit_dir>/<table>/<tag>.parquet`."""
    for name, table in rows.tables().items():
        if table.num_rows:
            write_table(fs, f"{unit_dir}/{name}/{tag}.parquet", table)
