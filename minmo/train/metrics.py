"""Training metrics: a JSONL log, TensorBoard scalars and a console progress bar with ETA.

MFU = achieved model FLOP/s / (peak FLOP/s per device x devices). The peak comes from the job's
`peak_flops` (never hard-coded: it depends on the accelerator and the precision); without it MFU
is not reported. Achieved FLOPs per step are estimated the standard way for transformers:
2 x (parameters the forward pass runs through) x positions, plus 4 x (trainable parameters) x
positions for the backward pass (weight and input gradients of what trains; frozen modules
upstream of nothing trainable need no backward). Attention's quadratic term is left out, as in
the usual 6ND estimate.

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
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from minmo.io.atomic import write_bytes_atomic

EVENTS_GLOB = "events.out.tfevents.*"


def step_flops(positions: float, forward_params: int, trainable_params: int) -> float:
    return 2.0 * forward_params * positions + 4.0 * trainable_params * positions


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
