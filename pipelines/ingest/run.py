"""The ingest step: a source layout -> recordings, segments and quarantine tables in a build dir.

Owns: cutting the source listing into units of work, running each pending unit through the Ray
Data stages (decode tasks -> VAD actor pool -> three `write_parquet`s), marking duplicates, and
committing each unit atomically through the build directory's ledger. A rerun after a crash
skips committed units and redoes only the rest; nothing is written twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines.build import BuildDir, StepLedger
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.decode_stage import decode_batch
from pipelines.ingest.items import SourceItem
from pipelines.ingest.sources import list_sources
from pipelines.ingest.vad_stage import VadSegmenter
from pipelines.ray_runtime import ensure_ray
from schemas import QUARANTINE, RECORDINGS, SEGMENTS

STEP = "ingest"
TABLES = ("recordings", "segments", "quarantine")


@dataclass
class Unit:
    """A slice of the source listing committed as one: items in listing order plus the
    quarantine rows the listing produced among them."""

    items: list[tuple[int, SourceItem]] = field(default_factory=list)
    listing_rejects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def unit_id(self) -> str:
        keys = [f"{i.source_uri}|{i.item_key}" for _, i in self.items]
        keys += [f"{q['source_uri']}|{q['item_key']}|{q['reason_code']}" for q in self.listing_rejects]
        return hashlib.sha1("\n".join(keys).encode()).hexdigest()[:16]


def plan_units(listing: Iterable[SourceItem | dict[str, Any]], files_per_unit: int) -> Iterator[Unit]:
    """Chunk the (streamed) listing into units; the same listing always gives the same units."""
    unit = Unit()
    for order, entry in enumerate(listing):
        if isinstance(entry, SourceItem):
            unit.items.append((order, entry))
        else:
            unit.listing_rejects.append(entry)
        if len(unit.items) + len(unit.listing_rejects) >= files_per_unit:
            yield unit
            unit = Unit()
    if unit.items or unit.listing_rejects:
        yield unit


@dataclass
class IngestSummary:
    """What a run did (this run's work) and what the build holds (all committed units)."""

    units_run: int = 0
    units_skipped: int = 0
    run_files: int = 0
    run_audio_s: float = 0.0
    wall_s: float = 0.0
    recordings: int = 0
    segments: int = 0
    audio_s: float = 0.0
    duplicates: int = 0
    quarantined: Counter = field(default_factory=Counter)

    @property
    def audio_hours_per_wall_hour(self) -> float:
        return self.run_audio_s / self.wall_s if self.wall_s else 0.0

    def render(self) -> str:
        lines = [
            f"ingest: {self.units_run} unit(s) run, {self.units_skipped} already committed",
            f"  this run: {self.run_files} files, {self.run_audio_s / 3600:.3f} audio hours in "
            f"{self.wall_s:.1f} s wall = {self.audio_hours_per_wall_hour:,.0f} audio-h per wall-h",
            f"  build:    {self.recordings} recordings ({self.audio_s / 3600:.3f} h, "
            f"{self.duplicates} exact duplicates), {self.segments} segments",
            f"  quarantined: {sum(self.quarantined.values())}"
            + "".join(f"\n    {reason}: {n}" for reason, n in sorted(self.quarantined.items())),
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "quarantined"}
        data["quarantined"] = dict(self.quarantined)
        data["audio_hours_per_wall_hour"] = self.audio_hours_per_wall_hour
        return data


def run_ingest(src: str, build_uri: str, config: IngestConfig, progress: bool = True) -> IngestSummary:
    """Ingest `src` into the build directory `build_uri`; resumable and idempotent."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    ensure_ray(progress=progress)
    build = BuildDir(build_uri)
    ledger = StepLedger(build, STEP, TABLES)
    ledger.recover()
    summary = IngestSummary()
    listing = list_sources(src, config.format, corpus=config.corpus, task=config.task,
                           **config.storage_options)
    bar = tqdm(desc="ingest", unit="file", disable=not progress)
    for unit in plan_units(listing, config.files_per_unit):
        bar.update(len(unit.items) + len(unit.listing_rejects))
        if ledger.is_done(unit.unit_id):
            summary.units_skipped += 1
            continue
        unit_summary = _run_unit(build, ledger, unit, config)
        ledger.commit(unit.unit_id, unit_summary)
        summary.units_run += 1
        summary.run_files += len(unit.items)
        summary.run_audio_s += unit_summary["audio_s"]
        bar.set_postfix(audio_h=f"{summary.run_audio_s / 3600:.2f}")
    bar.close()
    for done in ledger.done_units():
        summary.recordings += done["recordings"]
        summary.segments += done["segments"]
        summary.audio_s += done["audio_s"]
        summary.duplicates += done["duplicates"]
        summary.quarantined.update(done["quarantined"])
    summary.wall_s = time.perf_counter() - started
    build.write_json_atomic(build.path("_state", STEP, "summary.json"), summary.to_dict())
    return summary


def _run_unit(build: BuildDir, ledger: StepLedger, unit: Unit, config: IngestConfig) -> dict[str, Any]:
    import ray

    staging = ledger.staging_dir(unit.unit_id)
    already = committed_sources(build, [i.source_uri for _, i in unit.items])
    items = [(o, i) for o, i in unit.items if i.source_uri not in already]
    listing_rejects = [q for q in unit.listing_rejects if q["source_uri"] not in already]
    cfg = config.to_dict()
    rows = [{"order": o, "item_json": json.dumps(i.to_row())} for o, i in items]
    quarantine_rows: list[dict[str, Any]] = list(listing_rejects)
    stats: dict[str, Any] = {"recordings": 0, "segments": 0, "audio_s": 0.0, "duplicates": 0}
    if rows:
        ds = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / config.decode_batch_size))
        ds = ds.map_batches(decode_batch, fn_kwargs={"config": cfg}, batch_format="pyarrow",
                            batch_size=config.decode_batch_size, num_cpus=1)
        ds = ds.map_batches(VadSegmenter, fn_constructor_kwargs={"config": cfg},
                            batch_format="pyarrow", batch_size=config.vad_batch_size, num_cpus=1,
                            compute=ray.data.ActorPoolStrategy(size=config.vad_actors))
        meta = ds.materialize()
        dup_of = find_duplicates(build, meta)
        recordings = meta.map_batches(_recordings_table, fn_kwargs={"dup_of": dup_of},
                                      batch_format="pyarrow")
        recordings.write_parquet(f"{staging}/recordings", filesystem=build.fs)
        segments = meta.map_batches(_segments_table, batch_format="pyarrow")
        segments.write_parquet(f"{staging}/segments", filesystem=build.fs)
        rejects = meta.map_batches(_quarantine_table, batch_format="pyarrow")
        rejects.write_parquet(f"{staging}/quarantine", filesystem=build.fs)
        stats["recordings"] = recordings.count()
        stats["segments"] = segments.count()
        stats["audio_s"] = float(recordings.sum("duration_s") or 0.0) if stats["recordings"] else 0.0
        stats["duplicates"] = sum(1 for v in dup_of.values() if v)
        quarantine_rows += [r for r in rejects.iter_rows()]
    if listing_rejects:
        build.fs.create_dir(f"{staging}/quarantine", recursive=True)
        with build.fs.open_output_stream(f"{staging}/quarantine/listing.parquet") as out:
            pq.write_table(QUARANTINE.from_rows(listing_rejects), out)
    stats["quarantined"] = dict(Counter(q["reason_code"] for q in quarantine_rows))
    stats["files"] = len(items)
    return stats


def committed_sources(build: BuildDir, uris: list[str]) -> set[str]:
    """Which of `uris` the build already holds (in recordings or quarantine): a guard so that a
    source whose listing changed between runs is still never ingested twice."""
    found: set[str] = set()
    for table in ("recordings", "quarantine"):
        files = build.files(build.table_dir(table), ".parquet")
        if not files or not uris:
            continue
        dataset = pads.dataset(files, filesystem=build.fs, format="parquet")
        hits = dataset.to_table(columns=["source_uri"], filter=pc.field("source_uri").isin(uris))
        found.update(hits.column("source_uri").to_pylist())
    return found


def find_duplicates(build: BuildDir, meta: Any) -> dict[str, str | None]:
    """recording_id -> earlier recording_id with identical decoded content (or None).

    "Earlier" is listing order: first the committed tables (scanned only for this unit's hashes,
    never loaded whole), then earlier items of the same unit."""
    found = []
    for row in meta.select_columns(["order", "recording_json"]).iter_rows():
        if row["recording_json"]:
            rec = json.loads(row["recording_json"])
            found.append((row["order"], rec["recording_id"], rec["content_sha1"]))
    found.sort()
    first: dict[str, str] = {}
    files = build.files(build.table_dir("recordings"), ".parquet")
    if files and found:
        dataset = pads.dataset(files, filesystem=build.fs, format="parquet")
        hashes = sorted({h for _, _, h in found})
        earlier = dataset.to_table(
            columns=["content_sha1", "recording_id", "dup_of"],
            filter=pc.field("content_sha1").isin(hashes) & pc.field("dup_of").is_null(),
        )
        for sha, rid in zip(earlier.column("content_sha1").to_pylist(),
                            earlier.column("recording_id").to_pylist(), strict=True):
            first.setdefault(sha, rid)
    dup_of: dict[str, str | None] = {}
    for _, rid, sha in found:
        original = first.setdefault(sha, rid)
        dup_of[rid] = original if original != rid else None
    return dup_of


def _recordings_table(batch: pa.Table, dup_of: dict[str, str | None]) -> pa.Table:
    rows = [json.loads(r) for r in batch.column("recording_json").to_pylist() if r]
    for row in rows:
        row["dup_of"] = dup_of.get(row["recording_id"])
    return RECORDINGS.from_rows(rows)


def _segments_table(batch: pa.Table) -> pa.Table:
    rows = [s for r in batch.column("segments_json").to_pylist() for s in json.loads(r)]
    return SEGMENTS.from_rows(rows)


def _quarantine_table(batch: pa.Table) -> pa.Table:
    rows = [q for r in batch.column("quarantine_json").to_pylist() for q in json.loads(r)]
    return QUARANTINE.from_rows(rows)


def read_table(build: BuildDir, table: str) -> pa.Table:
    """A whole committed table (for tests and small builds; steps stream instead)."""
    contract = {"recordings": RECORDINGS, "segments": SEGMENTS, "quarantine": QUARANTINE}[table]
    files = build.files(build.table_dir(table), ".parquet")
    if not files:
        return contract.empty()
    return pads.dataset(files, filesystem=build.fs, format="parquet", schema=contract.schema).to_table()
