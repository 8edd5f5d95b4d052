"""`num_workers: auto`: DataLoader workers chosen from the measured loader/step ratio.

The trainer starts such a run with no workers, so that loading (read, decode, batch, collate)
runs in the main process where it can be timed. `WorkerProbe` times the first micro-batches:
seconds spent fetching a batch against seconds spent in the rest of the step (forward,
backward, optimizer). After `WorkerProbe.batches` measured micro-batches (the first one,
which pays for compilation and warm-up, is not counted), `choose_workers` turns the two
means into a worker count and the loader reopens with it at the same position, so the batches,
and the losses, are exactly those of a run with that count from the start.

With n workers, loading runs beside the step and delivers n batches per `load_s`: the step
stays fed when n >= load_s / step_s. The count keeps a margin for jitter, is capped by the CPUs
this rank may use (beside its own main process), and is 0 when loading costs a few percent of
the step or less (no worker processes, no start-up per epoch).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

INLINE_FRACTION = 0.05
"""Loading at most this fraction of the compute step stays in the main process."""
MARGIN = 1.25
"""Workers provisioned beyond the bare ratio, for batch-to-batch jitter."""


def choose_workers(load_s: float, step_s: float, max_workers: int) -> int:
    """Workers that keep a step of `step_s` seconds fed from batches that take `load_s` seconds
    each to load: 0 when `load_s <= INLINE_FRACTION * step_s`, else ceil(MARGIN * load_s /
    step_s) clamped to [1, max_workers]."""
    if load_s < 0 or step_s < 0 or max_workers < 0:
        raise ValueError(f"timings and max_workers must be >= 0: {load_s}, {step_s}, {max_workers}")
    if max_workers == 0 or load_s <= INLINE_FRACTION * step_s:
        return 0
    if step_s == 0:
        return max_workers
    return max(1, min(max_workers, math.ceil(MARGIN * load_s / step_s)))


def cpus_for_workers() -> int:
    """CPUs this rank's workers may use: the process's CPUs shared among the node's ranks
    (torchrun's LOCAL_WORLD_SIZE), less one for the rank's own main process; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, cpus // ranks - 1)


@dataclass
class WorkerProbe:
    """Timings of the first micro-batches of an `auto` run: where `choose_workers`'s inputs
    come from."""

    batches: int = 3
    """Micro-batches measured (after one unmeasured warm-up)."""
    load_s: float = 0.0
    step_s: float = 0.0
    seen: int = 0

    def add(self, load_s: float, step_s: float) -> None:
        """One micro-batch: `load_s` fetching it, `step_s` computing on it."""
        if self.seen > 0:  # the first pays for warm-up (and compilation)
            self.load_s += load_s
            self.step_s += step_s
        self.seen += 1

    @property
    def done(self) -> bool:
        return self.seen > self.batches

    def means(self) -> tuple[float, float]:
        """(load seconds, step seconds) per measured micro-batch."""
        n = max(1, self.seen - 1)
        return self.load_s / n, self.step_s / n
