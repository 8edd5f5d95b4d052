"""Training metrics: a JSONL log, TensorBoard scalars and a console progress bar with ETA.

MFU = achieved model FLOP/s / (peak FLOP/s per device x devices): the FLOPs counted from what
ran in the stage (minmo/train/flops.py, which documents the formula), the peak from the job's
`peak_flops` or, for a GPU training in bf16, from the device's name (`flops.BF16_PEAK_FLOPS`);
without a peak (CPU) MFU is not reported.

Loss per task (`TaskLosses`): `<kind>_loss/<task>` = the summed loss of the step's samples of
that task (every micro-batch and rank) over their summed weight (tokens for text and speech,
class weights for duplex), from each sample's share that `MinMo.forward` reports. It is the
step's loss restricted to the task's samples, token-weighted over the whole step, where the
logged `loss` is the mean of micro-batch means (the two agree for a single micro-batch and
rank).

Resume: a run resumed from the checkpoint at step N redoes the steps after N, so it first cuts
metrics.jsonl and the TensorBoard event file back to step N (each rewritten atomically), then
appends: every step appears once, in one metrics.jsonl and one event file, however often the
run was killed and resumed. The event file is written through TensorBoard's own record writer
and summary protos (`EventLog`), appending to the file a killed run left instead of opening a
second one, as `SummaryWriter` would (its `purge_step` only hides the old steps, in a new file).
"""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from minmo.io.atomic import write_bytes_atomic
from minmo.model.minmo import LOSS_OF_STAGE
from schemas.tasks import STAGE_TASKS

EVENTS_GLOB = "events.out.tfevents.*"


# Every task name a shard may carry, then one bucket for a name outside the taxonomy.
TASK_NAMES: tuple[str, ...] = (*sorted({t for ts in STAGE_TASKS.values() for t in ts}), "other")
LOSS_KINDS: tuple[str, ...] = tuple(sorted(set(LOSS_OF_STAGE.values())))


class TaskLosses:
    """One step's loss per task and loss kind, summed on the device (no host sync per
    micro-batch); `values()` is what the ranks all-reduce, `record()` the logged scalars.
    The vector has a fixed length (every kind x every task), so ranks with different tasks in
    their batches all-reduce the same shape."""

    def __init__(self, device: torch.device) -> None:
        self._index = {name: i for i, name in enumerate(TASK_NAMES)}
        # (kind, task, [loss sum, weight])
        self._sums = torch.zeros(len(LOSS_KINDS), len(TASK_NAMES), 2, device=device)

    def add(self, out: Mapping[str, Any], tasks: Sequence[str] | None) -> None:
        """One micro-batch: `out` from MinMo.forward, `tasks` the batch's (B,) task names."""
        if tasks is None:
            return
        other = self._index["other"]
        rows = torch.tensor([self._index.get(t, other) for t in tasks], device=self._sums.device)
        for k, kind in enumerate(LOSS_KINDS):
            if f"{kind}_loss_sums" not in out:
                continue
            shares = torch.stack(
                [out[f"{kind}_loss_sums"].detach(), out[f"{kind}_loss_counts"].detach()], dim=1
            )
            self._sums[k].index_add_(0, rows, shares.to(self._sums.dtype))

    def values(self) -> list[float]:
        return self._sums.flatten().tolist()

    def record(self, reduced: Sequence[float]) -> dict[str, float]:
        """`<kind>_loss/<task>` for every kind and task with weight in the step (all ranks)."""
        sums = torch.tensor(list(reduced), dtype=torch.float64).view(self._sums.shape)
        out = {}
        for k, kind in enumerate(LOSS_KINDS):
            for t, task in enumerate(TASK_NAMES):
                loss, weight = sums[k, t].tolist()
                if weight > 0:
                    out[f"{kind}_loss/{task}"] = loss / weight
        return out


class MetricsLog:
    def __init__(
        self,
        out_dir: str | Path,
        enabled: bool,
        total_steps: int,
        start_step: int,
        tensorboard: bool,
        progress: bool,
    ) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.writer: EventLog | None = None
        self.bar = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_jsonl(self.path, start_step)
        if tensorboard:
            try:
                self.writer = EventLog(Path(out_dir) / "tensorboard", start_step)
            except ImportError:  # tensorboard not installed: JSONL only, said once
                print("metrics: tensorboard is not installed; writing metrics.jsonl only")
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", desc="train")
        self.started = time.perf_counter()

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)
        if self.bar is not None:
            self.bar.update(1)
            shown = {
                "loss": f"{values.get('loss', float('nan')):.4f}",
                "lr": f"{values.get('lr', 0):.2e}",
            }
            if "valid_loss" in values:
                shown["valid_loss"] = f"{values['valid_loss']:.4f}"
            self.bar.set_postfix(shown)

    def flush(self) -> None:
        """Everything logged so far on disk (metrics.jsonl is appended and closed per record)."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the records of steps up to `last_step` (the resumed checkpoint's), atomically: the
    steps after it are redone and logged again. A line a kill cut short is dropped too."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", last_step + 1) <= last_step:
            kept.append(line + "\n")
    if len(kept) != len(lines):
        write_bytes_atomic(pafs.LocalFileSystem(), str(path), "".join(kept).encode())


class EventLog:
    """One TensorBoard event file per run directory, appended across resumes.

    Opening cuts the directory's event files back to `last_step` and merges them into one
    (the oldest name; a directory from before this class may hold one file per run), written
    atomically, then appends to it."""

    def __init__(self, log_dir: Path, last_step: int) -> None:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event = event_pb2.Event
        log_dir.mkdir(parents=True, exist_ok=True)
        existing = sorted(log_dir.glob(EVENTS_GLOB))
        if existing:
            self.path = existing[0]
            kept = [e for p in existing for e in _read_events(p) if e.step <= last_step]
            if not any(e.HasField("file_version") for e in kept):
                kept.insert(0, self._first_event())
            buffer = io.BytesIO()
            records = RecordWriter(buffer)
            for event in kept:  # as read: re-serialising keeps every field and its form
                records.write(event.SerializeToString())
            write_bytes_atomic(pafs.LocalFileSystem(), str(self.path), buffer.getvalue())
            for other in existing[1:]:
                other.unlink()
        else:
            name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
            self.path = log_dir / name
        self._file = self.path.open("ab")
        self._records = RecordWriter(self._file)
        if not existing:
            self._write(self._first_event())

    def _first_event(self) -> Any:
        return self._event(wall_time=time.time(), file_version="brain.Event:2")

    def _write(self, event: Any) -> None:
        self._records.write(event.SerializeToString())

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from torch.utils.tensorboard.summary import scalar

        self._write(self._event(wall_time=time.time(), step=step, summary=scalar(tag, value)))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _read_events(path: Path) -> list[Any]:
    """The events of one file as written (the raw loader: the plain one migrates scalars to
    tensors), in order; a record a kill cut short ends the file."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    return [event_pb2.Event.FromString(r) for r in RawEventFileLoader(str(path)).Load()]


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
