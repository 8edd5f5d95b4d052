"""The ingest step: source layouts -> recordings, segments and quarantine tables in a build dir.

Owns: cutting the streamed source listing into units of work, feeding pending units to one
pool of ingest workers for the whole run (pipelines/ingest/worker.py: decode -> VAD -> staged
Parquet in one process), marking duplicates, and committing each unit atomically through the
build directory's ledger as soon as all its rows are staged. A rerun after a crash skips
committed units and redoes only the rest; nothing is written twice.

The summary (`IngestSummary`, printed by `minmo ingest` and saved as `_state/ingest/summary.json`)
also lists the manifest columns the listing skipped, with their row counts, tallied on the
driver as the listing streams (O(columns)), so that no column is dropped silently.

Why units and a window: a unit (`files_per_unit` files) is the granule of resume; the driver
holds at most `units_per_wave` units in flight, so its memory is bounded whatever the listing's
size, while the worker pool (and its model load) starts once per run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from minmo.io.parquet import write_table
from pipelines.audio_source import SourceRoots
from pipelines.build import BuildDir, StepLedger
from pipelines.ingest.commit import (
    committed_sources,
    fill_source_keys,
    mark_duplicates,
    reject_key,
    unit_stats,
)
from pipelines.ingest.commit_index import CommitIndex
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.items import SourceItem
from pipelines.ingest.sources import ColumnTally, list_sources
from pipelines.ingest.worker import WorkerPool
from pipelines.ray_runtime import ensure_ray
from schemas import CONTRACTS, QUARANTINE

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
        """Named by relocatable keys, so a moved corpus plans the units it already committed."""
        keys = [f"{i.key}|{i.item_key}" for _, i in self.items]
        keys += [
            f"{reject_key(q)}|{q['item_key']}|{q['reason_code']}" for q in self.listing_rejects
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
    listed: int = 0
    """Entries the listings gave (audio files and refusals): every one is a recording, a
    refusal or already in the build, so `listed == recordings + refused + already_ingested`."""
    refused: int = 0
    """Listed entries quarantined whole (a file or listing entry; label rows aside)."""
    quarantined: Counter = field(default_factory=Counter)
    ignored_columns: dict[str, int] = field(default_factory=dict)
    """Manifest columns (and Lhotse `custom.<key>`s) this run's listing carried and ingest does
    not read, with the rows that gave each a value: listed so none is dropped silently."""

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
            f"  listed:   {self.listed} entries = {self.recordings} recordings + {self.refused} "
            f"refused + {self.already_ingested} already in the build",
            f"  quarantined: {sum(self.quarantined.values())}"
            + "".join(f"\n    {reason}: {n}" for reason, n in sorted(self.quarantined.items())),
        ]
        if self.ignored_columns:
            listed = ", ".join(
                f"{c} ({n} row{'' if n == 1 else 's'})" for c, n in self.ignored_columns.items()
            )
            lines.append(f"  ignored manifest columns: {listed}")
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
    index = CommitIndex.open(build, ledger)
    roots = SourceRoots.load(build)  # moved sources keep the keys they were ingested under
    summary = IngestSummary()
    # The listing streams on the driver, so its skipped columns are tallied here (O(columns));
    # a rerun lists everything again, committed units included, so the tally is the whole
    # listing's every time.
    ignored = ColumnTally()
    listing = itertools.chain.from_iterable(
        list_sources(
            s,
            config.format,
            corpus=config.corpus,
            task=config.task,
            original_uri=roots.unresolve,
            emotion_map=config.emotion_map,
            ignored=ignored,
            **config.storage_options,
        )
        for s in sources
    )
    bar = tqdm(desc="ingest", unit="file", disable=not progress)
    runner: UnitRunner | None = None  # started with the first pending unit: none if all done
    try:
        for unit in plan_units(listing, config.files_per_unit):
            if ledger.is_done(unit.unit_id):
                summary.units_skipped += 1
                bar.update(unit.size)
                continue
            runner = runner or UnitRunner(build, ledger, config, summary, bar, index)
            runner.add(unit)
        if runner:
            runner.finish()
    finally:
        if runner:
            runner.close()
        ledger.finish()
    bar.close()
    summary.ignored_columns = ignored.as_dict()
    for done in ledger.done_units():
        summary.recordings += done["recordings"]
        summary.segments += done["segments"]
        summary.audio_s += done["audio_s"]
        summary.duplicates += done["duplicates"]
        summary.already_ingested += done.get("already_ingested", 0)
        # units committed before these counts existed: every file a recording or a refusal
        summary.refused += done.get("refused", 0)
        summary.listed += done.get(
            "listed", done["recordings"] + done.get("refused", 0) + done.get("already_ingested", 0)
        )
        summary.quarantined.update(done["quarantined"])
    summary.wall_s = time.perf_counter() - started
    build.write_json_atomic(build.path("_state", STEP, "summary.json"), summary.to_dict())
    return summary


class UnitRunner:
    """Feeds pending units, in listing order, to one worker pool for the whole run, and commits
    each unit as soon as the workers have staged all of its items.

    Per unit in flight the driver holds its listing entries and a few counters; a unit's state
    is dropped when it commits, so memory is bounded by `units_per_wave` units, not the run.
    """

    def __init__(
        self,
        build: BuildDir,
        ledger: StepLedger,
        config: IngestConfig,
        summary: IngestSummary,
        bar: Any,
        index: CommitIndex,
    ) -> None:
        self.build, self.ledger, self.config, self.index = build, ledger, config, index
        self.keys: dict[str, list[str]] = {}  # unit -> source keys it stages
        self.summary, self.bar = summary, bar
        self.units: dict[str, Unit] = {}  # in flight: prepared, not yet committed
        self.in_flight: dict[str, Unit] = {}  # the same, until their driver state is dropped
        self.expected: dict[str, int] = {}
        self.already: dict[str, int] = {}
        self.rejected: dict[str, int] = {}  # listing refusals staged per unit
        self.seen: set[str] = set()  # source keys of units in flight; the index has the rest
        self.staged: Counter = Counter()  # items staged per unit, as the workers report them
        self.rows: list[dict[str, Any]] = []  # _prepare's output for the unit being added
        self.pool = WorkerPool(config, build.fs, ledger.staging_root)

    def add(self, unit: Unit) -> None:
        """Prepare `unit` and queue its items, first waiting while the window is full."""
        while len(self.units) >= self.config.units_per_wave:
            self._step()
        self.units[unit.unit_id] = self.in_flight[unit.unit_id] = unit
        self._prepare(unit)
        rows, self.rows = self.rows, []
        if rows:
            self.pool.submit(unit.unit_id, [(r["order"], r["item_json"]) for r in rows])
        else:  # nothing left to run (all committed before, or listing rejects only)
            self._commit_complete()
            self._forget_committed()

    def finish(self) -> None:
        """Wait for every queued batch, committing units as they complete."""
        while self.pool.busy:
            self._step()
        self._commit_complete()
        self._forget_committed()
        missing = sorted(self.units)
        if missing:
            raise RuntimeError(f"ingest: units {missing} did not complete; rerun to resume")

    def close(self) -> None:
        self.pool.close()

    def _step(self) -> None:
        for unit_id, items in self.pool.wait(POLL_S):
            self.staged[unit_id] += items
        self._commit_complete()
        self._forget_committed()

    def _staged_items(self) -> Counter:
        """Items staged per unit in flight: workers report a batch once its files are written."""
        return self.staged

    def _forget_committed(self) -> None:
        """Drop the driver's state of the units committed since the last call."""
        for unit_id in [u for u in self.in_flight if u not in self.units]:
            for _, item in self.in_flight.pop(unit_id).items:
                self.seen.discard(item.key)
            self.expected.pop(unit_id, None)
            self.already.pop(unit_id, None)
            self.rejected.pop(unit_id, None)
            self.staged.pop(unit_id, None)

    def _prepare(self, unit: Unit) -> None:
        """Drop what an earlier run already committed (a listing that changed between runs
        must not ingest a file twice); stage the listing's own quarantine rows now."""
        keys = [i.key for _, i in unit.items] + [reject_key(q) for q in unit.listing_rejects]
        committed = committed_sources(self.index, keys)
        items = []
        for order, item in unit.items:
            # Listed twice in this wave (two manifest rows, one file): the first listing wins.
            if item.key not in committed and item.key not in self.seen:
                items.append((order, item))
                self.seen.add(item.key)
        rejects = [q for q in unit.listing_rejects if reject_key(q) not in committed]
        for q in rejects:
            q["source_key"] = reject_key(q)
        self.keys[unit.unit_id] = [i.key for _, i in items] + [reject_key(q) for q in rejects]
        staging = self.ledger.staging_dir(unit.unit_id)
        if rejects:
            write_table(
                self.build.fs,
                f"{staging}/quarantine/listing.parquet",
                QUARANTINE.from_rows(rejects),
            )
        self.expected[unit.unit_id] = len(items)
        self.already[unit.unit_id] = unit.size - len(items) - len(rejects)
        self.rejected[unit.unit_id] = len(rejects)
        self.rows += [
            {"unit": unit.unit_id, "order": o, "item_json": json.dumps(i.to_row())}
            for o, i in items
        ]

    def _commit_complete(self) -> None:
        staged = self._staged_items()
        for unit_id in list(self.units):
            staging = self.ledger.staging_dir(unit_id)
            if staged[unit_id] < self.expected[unit_id]:
                continue
            unit = self.units.pop(unit_id)
            order = {i.source_uri: o for o, i in unit.items}
            key_of = {i.source_uri: i.key for _, i in unit.items}
            fill_source_keys(self.build, f"{staging}/quarantine", key_of)
            stats = unit_stats(self.build, staging)
            stats["duplicates"], originals = mark_duplicates(
                self.build, self.index, f"{staging}/recordings", order
            )
            stats["files"] = self.expected[unit_id]
            stats["already_ingested"] = self.already[unit_id]
            stats["listed"] = unit.size
            # an item that made no recording was quarantined whole by its worker
            stats["refused"] = self.expected[unit_id] - stats["recordings"] + self.rejected[unit_id]
            self.index.add(unit_id, self.keys.pop(unit_id), originals)  # before the marker
            self.ledger.commit(unit_id, stats)
            self.index.maybe_fold()
            self.summary.units_run += 1
            self.summary.run_files += stats["files"]
            self.summary.run_audio_s += stats["audio_s"]
            self.bar.update(unit.size)
            self.bar.set_postfix(audio_h=f"{self.summary.run_audio_s / 3600:.2f}")


def read_table(build: BuildDir, table: str) -> pa.Table:
    """A whole committed table (for tests and small builds; steps stream instead)."""
    contract = CONTRACTS[table]
    files = build.files(build.table_dir(table), ".parquet")
    if not files:
        return contract.empty()
    return pads.dataset(
        files, filesystem=build.fs, format="parquet", schema=contract.schema
    ).to_table()
