"""A step that turns each recording into rows of its own tables, resumably, through Ray Data.

Owns: choosing which recordings are still to do, cutting them into units, running waves of units
through a Ray Data stage, collecting each recording's result on the driver, and committing a unit
(its tables' Parquet parts, then its marker) as soon as all its recordings are back.
Must not: know what the stage computes; steps (diarize, label-turns) bring the stage.

Why results come back to the driver instead of a Datasink (as ingest does): a recording's output
here is a few dozen metadata rows, not audio, so the driver can hold a wave's worth, and unit
commits need no progress files. Done markers list their recordings, and what is to do is decided
per recording, not per unit: recordings added to the build later never shift a committed unit,
and a rerun after a crash redoes exactly the recordings without a marker.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from minmo.io.parquet import write_table
from pipelines.build import BuildDir, StepLedger
from schemas import TableContract

# A stage's output row: which unit and recording it belongs to, and the JSON of
# {"tables": {table: [row, ...]}, "stats": {name: number}} for that recording.
RESULT_COLUMNS = ("unit", "recording_id", "result_json")


@dataclass
class WorkUnit:
    unit_id: str
    items: list[dict[str, Any]]  # each has "recording_id" plus whatever the stage needs


def plan_units(items: Iterable[dict[str, Any]], per_unit: int) -> Iterator[WorkUnit]:
    """Chunk pending work (sorted by recording id by the caller) into units with stable ids."""
    it = iter(items)
    while chunk := list(itertools.islice(it, per_unit)):
        ids = "\n".join(i["recording_id"] for i in chunk)
        yield WorkUnit(hashlib.sha1(ids.encode()).hexdigest()[:16], chunk)


@dataclass
class StepTotals:
    """What the committed units of a step hold, summed from their markers."""

    recordings: int = 0
    rows: Counter = field(default_factory=Counter)
    quarantined: Counter = field(default_factory=Counter)
    stats: Counter = field(default_factory=Counter)
    lists: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class RunCounts:
    """This run's work."""

    units_run: int = 0
    recordings_run: int = 0
    wall_s: float = 0.0
    stats: Counter = field(default_factory=Counter)


class RecordingStep:
    """Run a per-recording Ray Data stage over pending recordings, unit by unit."""

    def __init__(
        self,
        build: BuildDir,
        step: str,
        contracts: dict[str, TableContract],
        recordings_per_unit: int,
        units_per_wave: int,
    ) -> None:
        self.build = build
        self.step = step
        self.contracts = contracts
        self.ledger = StepLedger(build, step, tuple(contracts))
        self.recordings_per_unit = recordings_per_unit
        self.units_per_wave = units_per_wave

    def covered(self) -> set[str]:
        """Recording ids some committed unit already holds (results or quarantine)."""
        done: set[str] = set()
        for marker in self.ledger.done_units():
            done.update(marker["recording_ids"])
        return done

    def run(
        self,
        pending: Iterable[dict[str, Any]],
        build_dataset: Callable[[Any], Any],
        progress: bool,
        total: int | None = None,
    ) -> RunCounts:
        """Process `pending` work items; `build_dataset(ds)` maps a Ray Dataset of work rows
        (unit, recording_id, item_json) to one of result rows (RESULT_COLUMNS)."""
        from tqdm.auto import tqdm

        started = time.perf_counter()
        self.ledger.recover()
        counts = RunCounts()
        bar = tqdm(desc=self.step, unit="rec", total=total, disable=not progress)
        units = plan_units(pending, self.recordings_per_unit)
        try:
            while wave := list(itertools.islice(units, self.units_per_wave)):
                self._run_wave(wave, build_dataset, counts, bar)
        finally:
            self.ledger.finish()
        bar.close()
        counts.wall_s = time.perf_counter() - started
        return counts

    def _run_wave(
        self, wave: list[WorkUnit], build_dataset: Callable[[Any], Any], counts: RunCounts, bar: Any
    ) -> None:
        import ray

        rows = [
            {"unit": u.unit_id, "recording_id": i["recording_id"], "item_json": json.dumps(i)}
            for u in wave
            for i in u.items
        ]
        expected = {u.unit_id: len(u.items) for u in wave}
        results: dict[str, list[dict[str, Any]]] = {u.unit_id: [] for u in wave}
        ds = build_dataset(ray.data.from_items(rows, override_num_blocks=len(rows)))
        for row in ds.iter_rows():
            unit_id = row["unit"]
            results[unit_id].append(json.loads(row["result_json"]) | {"id": row["recording_id"]})
            bar.update(1)
            if len(results[unit_id]) == expected[unit_id]:
                self._commit(unit_id, results.pop(unit_id), counts)
                bar.set_postfix(audio_h=f"{counts.stats['audio_s'] / 3600:.2f}")
        if results:
            raise RuntimeError(f"{self.step}: units {sorted(results)} incomplete; rerun to resume")

    def _commit(self, unit_id: str, results: list[dict[str, Any]], counts: RunCounts) -> None:
        staging = self.ledger.staging_dir(unit_id)
        summary: dict[str, Any] = {
            "recording_ids": sorted(r["id"] for r in results),
            "rows": {},
            "quarantined": {},
            "stats": {},
            "lists": {},
        }
        for name, contract in self.contracts.items():
            table_rows = [row for r in results for row in r["tables"].get(name, [])]
            summary["rows"][name] = len(table_rows)
            if table_rows:
                write_table(
                    self.build.fs, f"{staging}/{name}/part.parquet", contract.from_rows(table_rows)
                )
            if name == "quarantine":
                summary["quarantined"] = dict(Counter(q["reason_code"] for q in table_rows))
        stats: Counter = Counter()
        for r in results:
            stats.update({k: v for k, v in r.get("stats", {}).items()})
            for key, values in r.get("lists", {}).items():
                summary["lists"].setdefault(key, []).extend(values)
        summary["stats"] = dict(stats)
        self.ledger.commit(unit_id, summary)
        counts.units_run += 1
        counts.recordings_run += len(results)
        counts.stats.update(stats)

    def totals(self) -> StepTotals:
        totals = StepTotals()
        for marker in self.ledger.done_units():
            totals.recordings += len(marker["recording_ids"])
            totals.rows.update(marker["rows"])
            totals.quarantined.update(marker["quarantined"])
            totals.stats.update(marker["stats"])
            for key, values in marker.get("lists", {}).items():
                totals.lists.setdefault(key, []).extend(values)
        return totals
