"""The ingest step: source layouts -> recordings, segments and quarantine tables in a build dir.

Owns: cutting the streamed source listing into units of work, running waves of pending units
through Ray Data (decode -> VAD actor pool -> `write_datasink`), marking duplicates, and
committing each unit atomically through the build directory's ledger as soon as all its rows
are staged. A rerun after a crash skips committed units and redoes only the rest; nothing is
written twice.

Why units and waves: a unit (`files_per_unit` files) is the granule of resume; a wave
(`units_per_wave` units) is one Ray execution, so Ray's per-execution start-up (actor pool,
model load) is paid once per wave while the driver holds only one wave's listing in memory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.build import BuildDir, StepLedger
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.decode_stage import decode_batch
from pipelines.ingest.items import SourceItem
from pipelines.ingest.sink import StagedUnitsDatasink, write_table
from pipelines.ingest.sources import list_sources
from pipelines.ingest.vad_stage import VadSegmenter
from pipelines.ray_runtime import ensure_ray
from schemas import CONTRACTS, QUARANTINE, RECORDINGS

STEP = "ingest"
TABLES = ("recordings", "segments", "quarantine")
POLL_S = 1.0


@dataclass
class Unit:
    """A slice of the source listing committed as one: items in listing order plus the
    quarantine rows the listing produced among them."""

    items: list[tuple[int, SourceItem]] = field(default_factory=list)
    listing_rejects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def unit_id(self) -> str:
        keys = [f"{i.source_uri}|{i.item_key}" for _, i in self.items]
        keys += [
            f"{q['source_uri']}|{q['item_key']}|{q['reason_code']}" for q in self.listing_rejects
        ]
        return hashlib.sha1("\n".join(keys).encode()).hexdigest()[:16]

    @property
    def size(self) -> int:
        return len(self.items) + len(self.listing_rejects)


def plan_units(
    listing: Iterable[SourceItem | dict[str, Any]], files_per_unit: int
) -> Iterator[Unit]:
    """Chunk the (streamed) listing into units; the same listing always gives the same units."""
    unit = Unit()
    for order, entry in enumerate(listing):
        if isinstance(entry, SourceItem):
            unit.items.append((order, entry))
        else:
            unit.listing_rejects.append(entry)
        if unit.size >= files_per_unit:
            yield unit
            unit = Unit()
    if unit.size:
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
    already_ingested: int = 0
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
            f"  skipped, already in the build from another listing: {self.already_ingested}",
            f"  quarantined: {sum(self.quarantined.values())}"
            + "".join(f"\n    {reason}: {n}" for reason, n in sorted(self.quarantined.items())),
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "quarantined"}
        data["quarantined"] = dict(self.quarantined)
        data["audio_hours_per_wall_hour"] = self.audio_hours_per_wall_hour
        return data


def run_ingest(
    src: str | list[str], build_uri: str, config: IngestConfig, progress: bool = True
) -> IngestSummary:
    """Ingest one or more sources into the build directory `build_uri`; resumable, idempotent."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    sources = [src] if isinstance(src, str) else list(src)
    ensure_ray(progress=progress)
    build = BuildDir(build_uri, **config.storage_options)
    ledger = StepLedger(build, STEP, TABLES)
    ledger.recover()
    summary = IngestSummary()
    listing = itertools.chain.from_iterable(
        list_sources(
            s, config.format, corpus=config.corpus, task=config.task, **config.storage_options
        )
        for s in sources
    )
    bar = tqdm(desc="ingest", unit="file", disable=not progress)
    units = plan_units(listing, config.files_per_unit)
    while wave := list(itertools.islice(units, config.units_per_wave)):
        pending = []
        for unit in wave:
            if ledger.is_done(unit.unit_id):
                summary.units_skipped += 1
                bar.update(unit.size)
            else:
                pending.append(unit)
        if pending:
            WaveRunner(build, ledger, config, pending, summary, bar).run()
    bar.close()
    for done in ledger.done_units():
        summary.recordings += done["recordings"]
        summary.segments += done["segments"]
        summary.audio_s += done["audio_s"]
        summary.duplicates += done["duplicates"]
        summary.already_ingested += done.get("already_ingested", 0)
        summary.quarantined.update(done["quarantined"])
    summary.wall_s = time.perf_counter() - started
    build.write_json_atomic(build.path("_state", STEP, "summary.json"), summary.to_dict())
    return summary


class WaveRunner:
    """One Ray execution over a wave of pending units, committing units as they complete."""

    def __init__(
        self,
        build: BuildDir,
        ledger: StepLedger,
        config: IngestConfig,
        units: list[Unit],
        summary: IngestSummary,
        bar: Any,
    ) -> None:
        self.build, self.ledger, self.config = build, ledger, config
        self.summary, self.bar = summary, bar
        self.units = {u.unit_id: u for u in units}
        self.expected: dict[str, int] = {}
        self.already: dict[str, int] = {}
        self.seen: set[str] = set()  # this wave's URIs; earlier waves are committed by now
        self.progress: dict[str, tuple[str, int]] = {}  # progress file -> (unit, items)
        self.rows: list[dict[str, Any]] = []
        for unit in units:
            self._prepare(unit)

    def _prepare(self, unit: Unit) -> None:
        """Drop what an earlier run already committed (a listing that changed between runs
        must not ingest a file twice); stage the listing's own quarantine rows now."""
        committed = committed_sources(self.build, [i.source_uri for _, i in unit.items])
        items = []
        for order, item in unit.items:
            # Listed twice in this wave (two manifest rows, one file): the first listing wins.
            if item.source_uri not in committed and item.source_uri not in self.seen:
                items.append((order, item))
                self.seen.add(item.source_uri)
        rejects = [q for q in unit.listing_rejects if q["source_uri"] not in committed]
        staging = self.ledger.staging_dir(unit.unit_id)
        if rejects:
            write_table(
                self.build.fs,
                f"{staging}/quarantine/listing.parquet",
                QUARANTINE.from_rows(rejects),
            )
        self.expected[unit.unit_id] = len(items)
        self.already[unit.unit_id] = unit.size - len(items) - len(rejects)
        self.rows += [
            {"unit": unit.unit_id, "order": o, "item_json": json.dumps(i.to_row())}
            for o, i in items
        ]

    def run(self) -> None:
        failure: list[BaseException] = []
        worker = threading.Thread(target=self._execute, args=(failure,), daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(POLL_S)
            self._commit_complete()
        if failure:
            raise failure[0]
        self._commit_complete()
        missing = sorted(self.units)
        if missing:
            raise RuntimeError(f"ingest: units {missing} did not complete; rerun to resume")

    def _execute(self, failure: list[BaseException]) -> None:
        import ray

        if not self.rows:
            return
        config = self.config
        cfg = config.to_dict()
        try:
            blocks = math.ceil(len(self.rows) / config.decode_batch_size)
            ds = ray.data.from_items(self.rows, override_num_blocks=blocks)
            ds = ds.map_batches(
                decode_batch,
                fn_kwargs={"config": cfg},
                batch_format="pyarrow",
                batch_size=config.decode_batch_size,
                num_cpus=1,
            )
            actors = config.vad_actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
            actors = min(actors, blocks)  # an actor without input only costs start-up
            ds = ds.map_batches(
                VadSegmenter,
                fn_constructor_kwargs={"config": cfg},
                batch_format="pyarrow",
                batch_size=config.vad_batch_size,
                num_cpus=1,
                compute=ray.data.ActorPoolStrategy(size=actors),
            )
            # Writing metadata is light: a fractional CPU lets write tasks run beside the actors
            # that hold every core, instead of queueing until the actors finish.
            ds.write_datasink(
                StagedUnitsDatasink(self.build.fs, self.ledger.staging_root),
                ray_remote_args={"num_cpus": 0.25},
            )
        except BaseException as exc:  # re-raised on the driver's main thread
            failure.append(exc)

    def _staged_items(self) -> Counter:
        """Items staged per unit: one recursive listing of this run's staging per poll, and each
        progress file read once (they are written by rename, so never change)."""
        root = self.ledger.staging_root
        if self.build.exists(root):
            infos = self.build.fs.get_file_info(pafs.FileSelector(root, recursive=True))
            for info in infos:
                parts = info.path[len(root) :].strip("/").split("/")
                is_progress = len(parts) == 3 and parts[1] == "progress"
                if is_progress and parts[2].endswith(".json") and info.path not in self.progress:
                    self.progress[info.path] = (parts[0], self.build.read_json(info.path)["items"])
        staged: Counter = Counter()
        for unit_id, items in self.progress.values():
            staged[unit_id] += items
        return staged

    def _commit_complete(self) -> None:
        staged = self._staged_items()
        for unit_id in list(self.units):
            staging = self.ledger.staging_dir(unit_id)
            if staged[unit_id] < self.expected[unit_id]:
                continue
            unit = self.units.pop(unit_id)
            order = {i.source_uri: o for o, i in unit.items}
            stats = unit_stats(self.build, staging)
            stats["duplicates"] = mark_duplicates(self.build, f"{staging}/recordings", order)
            stats["files"] = self.expected[unit_id]
            stats["already_ingested"] = self.already[unit_id]
            self.ledger.commit(unit_id, stats)
            self.summary.units_run += 1
            self.summary.run_files += stats["files"]
            self.summary.run_audio_s += stats["audio_s"]
            self.bar.update(unit.size)
            self.bar.set_postfix(audio_h=f"{self.summary.run_audio_s / 3600:.2f}")


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


def mark_duplicates(build: BuildDir, staged_dir: str, order: dict[str, int]) -> int:
    """Fill `dup_of` in a unit's staged recordings: the earlier recording with the same decoded
    content. "Earlier" is listing order: committed units first (scanned only for this unit's
    hashes, never loaded whole), then earlier items of this unit. Returns the duplicate count."""
    staged = build.files(staged_dir, ".parquet")
    if not staged:
        return 0
    mine = (
        pads.dataset(staged, filesystem=build.fs, format="parquet")
        .to_table(columns=["recording_id", "source_uri", "content_sha1"])
        .to_pylist()
    )
    mine.sort(key=lambda r: (order.get(r["source_uri"], 0), r["recording_id"]))
    first: dict[str, str] = {}
    committed = build.files(build.table_dir("recordings"), ".parquet")
    if committed:
        hashes = sorted({r["content_sha1"] for r in mine})
        earlier = pads.dataset(committed, filesystem=build.fs, format="parquet").to_table(
            columns=["content_sha1", "recording_id"],
            filter=pc.field("content_sha1").isin(hashes) & pc.field("dup_of").is_null(),
        )
        for sha, rid in zip(
            earlier.column("content_sha1").to_pylist(),
            earlier.column("recording_id").to_pylist(),
            strict=True,
        ):
            first.setdefault(sha, rid)
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
    return len(dup_of)


def read_table(build: BuildDir, table: str) -> pa.Table:
    """A whole committed table (for tests and small builds; steps stream instead)."""
    contract = CONTRACTS[table]
    files = build.files(build.table_dir(table), ".parquet")
    if not files:
        return contract.empty()
    return pads.dataset(
        files, filesystem=build.fs, format="parquet", schema=contract.schema
    ).to_table()
