"""Ingest workers: one process runs decode -> resample -> measure -> VAD -> staged Parquet.

Owns: the per-batch work of the ingest step and the pool of Ray actors that does it. A worker
takes a batch of one unit's items (listing entries, a few hundred bytes each), decodes them
one at a time, scores them with the VAD in batches, and writes the batch's metadata rows
straight into the unit's staging directory (pipelines/ingest/sink.py). It returns only a
count: no PCM and no rows ever cross Ray's object store or reach the driver.

Must not: decide what is committed (the driver does, from the counts), or hold more than one
VAD batch of audio at a time.

Why Ray actors and not a Ray Data pipeline: an execution of Ray Data needs its input planned up
front, so a run over a listing too large for the driver's memory had to be cut into waves, each
paying the pool's start-up again (~5 s here, more than a 256-file unit takes to process); and
the decode -> VAD hand-off moved every sample through the object store. One pool of actors fed
from a bounded window of units pays the start-up once per run and moves only listing entries.
"""

from __future__ import annotations

import json
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.fs as pafs

from pipelines.ingest.config import IngestConfig
from pipelines.ingest.decode_stage import decode_or_quarantine
from pipelines.ingest.items import SourceItem
from pipelines.ingest.sink import StagedRows, write_staged
from schemas.units import SAMPLE_RATE_HZ

if TYPE_CHECKING:
    from pipelines.ingest.vad_stage import Outcome

TASKS_PER_WORKER = 2
"""Batches queued on each worker at once: one running, one waiting, so a worker never idles
while the driver hears of a finished batch and sends the next."""

BatchRows = list[tuple[int, str]]
"""A batch: (listing order, SourceItem row as JSON) per item, all of one unit."""


class IngestWorker:
    """One CPU's worth of ingest: loads the VAD once, then processes batches until the run ends."""

    def __init__(self, config: dict[str, Any], fs: pafs.FileSystem, staging_root: str) -> None:
        # Imported here, not at the top: the driver defines this actor class but never runs it,
        # and torch (the VAD's) costs ~2 CPU-seconds to import.
        from pipelines.ingest.vad_stage import VadSegmenter

        self.config = IngestConfig(**config)
        self.segmenter = VadSegmenter(config)
        self.fs = fs
        self.staging_root = staging_root

    def process(self, unit_id: str, batch: BatchRows) -> tuple[str, int]:
        """Decode, segment and stage `batch`; returns (unit_id, items staged)."""
        cfg = self.config
        outcomes: list[Outcome | None] = []
        pending: list[tuple[int, SourceItem, dict[str, Any], np.ndarray]] = []
        pending_s = 0.0
        label_rejects: list[dict[str, Any]] = []
        for _, item_json in batch:
            item = SourceItem.from_row(json.loads(item_json))
            decoded, rejects = decode_or_quarantine(item, cfg)
            if decoded is None:
                outcomes.append((None, [], rejects))
                continue
            pending.append((len(outcomes), item, decoded.info, decoded.pcm_16k))
            outcomes.append(None)  # filled when its VAD batch runs
            label_rejects += rejects  # a decoded item's rows: its refused labels
            pending_s += decoded.pcm_16k.shape[1] / SAMPLE_RATE_HZ
            if len(pending) >= cfg.vad_batch_size or pending_s >= cfg.vad_batch_audio_s:
                self._segment(pending, outcomes)
                pending, pending_s = [], 0.0
        self._segment(pending, outcomes)
        rows = StagedRows()
        for recording, segments, rejects in outcomes:  # type: ignore[misc]
            if recording is not None:
                rows.recordings.append(recording)
            rows.segments += segments
            rows.quarantine += rejects
        rows.quarantine += label_rejects
        # The first listing position names the batch: unique in its unit, and the same when a
        # batch is retried, which then overwrites its own files.
        write_staged(self.fs, f"{self.staging_root}/{unit_id}", f"{batch[0][0]:012d}", rows)
        return unit_id, len(batch)

    def _segment(
        self,
        pending: list[tuple[int, SourceItem, dict[str, Any], np.ndarray]],
        outcomes: list[Outcome | None],
    ) -> None:
        if not pending:
            return
        results = self.segmenter.segment([(item, info, pcm) for _, item, info, pcm in pending])
        for (position, *_), outcome in zip(pending, results, strict=True):
            outcomes[position] = outcome


class WorkerPool:
    """IngestWorker actors (one CPU each) kept for the whole run, fed batches from a queue.

    Workers start on demand, up to `config.vad_actors` (default: every CPU of the Ray cluster),
    so a run of a few files starts one. A worker lost with its node is restarted by Ray and its
    batches retried; a batch's files are overwritten on retry, so nothing is staged twice.
    """

    def __init__(self, config: IngestConfig, fs: pafs.FileSystem, staging_root: str) -> None:
        import ray

        self._ray = ray
        self.config = config
        self.size = config.vad_actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._actor_class = ray.remote(IngestWorker).options(
            num_cpus=1, max_restarts=2, max_task_retries=2
        )
        self._args = (config.to_dict(), fs, staging_root)
        self.queue: deque[tuple[str, BatchRows]] = deque()
        self.actors: list[Any] = []
        self.load: list[int] = []
        self.running: dict[Any, int] = {}  # ObjectRef -> index of the actor running it

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.running)

    def submit(self, unit_id: str, rows: BatchRows) -> None:
        """Queue a unit's items as batches of `config.files_per_task`."""
        step = self.config.files_per_task
        for start in range(0, len(rows), step):
            self.queue.append((unit_id, rows[start : start + step]))
        self._dispatch()

    def wait(self, timeout_s: float) -> list[tuple[str, int]]:
        """(unit_id, items staged) of every batch finished within `timeout_s` (at least one,
        unless the timeout passes first). A batch that failed raises here."""
        if not self.running:
            return []
        ray = self._ray
        ready, _ = ray.wait(list(self.running), num_returns=1, timeout=timeout_s)
        if ready:
            ready, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
        done = []
        for ref in ready:
            self.load[self.running.pop(ref)] -= 1
            done.append(ray.get(ref))
        self._dispatch()
        return done

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors, self.load, self.running = [], [], {}

    def _dispatch(self) -> None:
        while self.queue:
            index = min(range(len(self.load)), key=self.load.__getitem__, default=None)
            if (index is None or self.load[index] > 0) and len(self.actors) < self.size:
                self.actors.append(self._actor_class.remote(*self._args))
                self.load.append(0)
                index = len(self.actors) - 1
            if index is None or self.load[index] >= TASKS_PER_WORKER:
                return
            unit_id, batch = self.queue.popleft()
            ref = self.actors[index].process.remote(unit_id, batch)
            self.running[ref] = index
            self.load[index] += 1
