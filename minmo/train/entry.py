"""Entry points for `minmo train`: in this process (single process or a torchrun rank), or on a
Ray cluster through Ray Train's TorchTrainer running the same `train` function per worker.

Multi-node with torchrun (run on every node; node 0's address as the rendezvous):

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank $NODE_RANK \\
        --rdzv-backend c10d --rdzv-endpoint $NODE0:29500 \\
        -m minmo.cli train jobs/train/1a.yaml --build /shared/build
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from minmo.train.config import TrainConfig, load_train_config
from minmo.train.loop import TrainResult, train


def run_train(job: str, build: str, progress: bool = True, **overrides: Any) -> TrainResult:
    """Train the stage a spec names; `overrides` (TrainConfig fields) go over the spec's."""
    return train(load_train_config(job, build, **overrides), build, progress=progress)


def _ray_worker(payload: dict[str, Any]) -> None:
    config = TrainConfig(**payload["config"])
    result = train(config, payload["build"], progress=False)
    import ray.train  # Ray Train is only needed on this path (`minmo train --ray`)

    ray.train.report(
        {"final_step": result.final_step, "last_loss": result.losses[-1] if result.losses else None}
    )


def run_train_ray(job: str, build: str, workers: int, use_gpu: bool, **overrides: Any) -> Any:
    """The same loop on `workers` Ray Train workers (DDP or FSDP2 as the job says)."""
    from ray.train import ScalingConfig  # Ray Train: only on this path, and slow to import
    from ray.train.torch import TorchTrainer

    config = load_train_config(job, build, **overrides)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"config": asdict(config), "build": build},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
    )
    return trainer.fit()
