"""Entry points for `minmo train`: in this process (single process or a torchrun rank), or on a
Ray cluster through Ray Train's TorchTrainer running the same `train` function per worker.

Multi-node with torchrun (run on every node; node 0's address as the rendezvous):

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank $NODE_RANK \\
        --rdzv-backend c10d --rdzv-endpoint $NODE0:29500 \\
        -m minmo.cli train jobs/train/1a.yaml --build /shared/build
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from minmo.train.config import TrainConfig, load_train_config
from minmo.train.loop import TrainResult, train
from minmo.train.store import is_remote


def run_train(job: str, build: str, progress: bool = True, **overrides: Any) -> TrainResult:
    """Train the stage a spec names; `overrides` (TrainConfig fields) go over the spec's."""
    return train(load_train_config(job, build, **overrides), build, progress=progress)


def _ray_worker(payload: dict[str, Any]) -> None:
    config = TrainConfig(**payload["config"])
    result = train(config, payload["build"], progress=False)
    import ray.train  # Ray Train is only needed on this path (`minmo train --ray`)

    summary = {
        "stage": result.stage,
        "final_step": result.final_step,
        "steps_run": result.steps_run,
        "last_loss": result.losses[-1] if result.losses else None,
        "resumed_from": result.resumed_from,
    }
    # Ray Train keeps only the metrics reported with a checkpoint (free-floating ones are
    # deprecated): rank 0 reports the run's summary as a one-file checkpoint. The model's own
    # checkpoints stay the trainer's (out/), which is what a rerun resumes from.
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            (Path(tmp) / "summary.json").write_text(json.dumps(summary))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(summary, checkpoint=checkpoint)


def run_train_ray(job: str, build: str, workers: int, use_gpu: bool, **overrides: Any) -> Any:
    """The same loop on `workers` Ray Train workers (DDP or FSDP2 as the job says); resumes
    from the stage's newest checkpoint like any run. Ray Train's own run records go beside a
    local checkpoint directory (`<out>/ray/`), not into ~/ray_results."""
    from ray.train import RunConfig, ScalingConfig  # Ray Train: only on this path, slow import
    from ray.train.torch import TorchTrainer

    config = load_train_config(job, build, **overrides)
    out = config.locations(build)[1]
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"config": asdict(config), "build": build},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(storage_path=None if is_remote(out) else str(Path(out) / "ray")),
    )
    return trainer.fit()


def render_ray(result: Any, workers: int) -> str:
    """What `minmo train --ray` prints: rank 0's report (Ray Train's `Result.metrics`)."""
    m = result.metrics or {}
    line = f"train {m.get('stage')} on Ray Train ({workers} workers): {m.get('steps_run', 0)} steps this "
    line += f"run (step {m.get('final_step')}); last loss {m.get('last_loss')}"
    if m.get("resumed_from"):
        line += f"\n  resumed from {m['resumed_from']}"
    return line
