"""Training metrics: a JSONL log, TensorBoard scalars and a console progress bar with ETA.

MFU = achieved model FLOP/s / (peak FLOP/s per device x devices). The peak comes from the job's
`peak_flops` (never hard-coded: it depends on the accelerator and the precision); without it MFU
is not reported. Achieved FLOPs per step are estimated the standard way for transformers:
2 x (parameters the forward pass runs through) x positions, plus 4 x (trainable parameters) x
positions for the backward pass (weight and input gradients of what trains; frozen modules
upstream of nothing trainable need no backward). Attention's quadratic term is left out, as in
the usual 6ND estimate.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


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
        self.writer = None
        self.bar = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))
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


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
