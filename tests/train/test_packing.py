"""`packing: true` through `minmo train`: the same batches give the padded run's losses, step
for step, and the logged padding fraction drops to nothing. Tiny synthetic shards; CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from minmo.cli import main
from minmo.train.metrics import read_metrics
from pipelines.shards.writer import write_stage_shards
from tests.train.test_train import _job, _stage1_samples


def test_packed_training_logs_the_padded_runs_losses(tmp_path: Path) -> None:
    build = tmp_path / "build"
    write_stage_shards(_stage1_samples(12), build / "shards" / "stage1", "stage1", max_samples=6)
    runs = {}
    for packing in (False, True):
        out = tmp_path / f"packing-{packing}"
        fields = {"steps": 3, "save_every": 100, "num_workers": 0, "max_samples": 4}
        job = _job(tmp_path, stage="1b", out=str(out), packing=packing, **fields)
        assert main(["-q", "train", str(job), "--build", str(build)]) == 0
        runs[packing] = read_metrics(out)
    padded, packed = runs[False], runs[True]
    # Audio of 0.25-1 s: spliced lengths differ, so padding to the longest wastes positions.
    assert sum(m["padding"] for m in padded) / len(padded) > 0.05
    assert all(m["padding"] == 0.0 for m in packed)  # 4 samples fit one row of 4096
    assert [m["loss"] for m in packed] == pytest.approx([m["loss"] for m in padded], rel=1e-5)
