"""Two ranks launched three ways give the same per-step losses: torchrun on one node (the
reference), torchrun as two local "nodes" (two agents, `--nnodes 2`, a c10d rendezvous on the
loopback) stopped and resumed, and `minmo train --ray --workers 2` (Ray Train) stopped and
resumed. Each run stops after step 2 (a finished `steps: 2` run) and a second run with
`--steps 5` resumes it. The learning rates of the first three updates (the last one set at the
end of step 2 and restored with the optimizer) lie in the linear warm-up, which does not
depend on the total, so the losses must equal the reference's five, bit for bit (gloo sums two
ranks' gradients in either order to the same value).

All slow: each launch starts Python, torch and the model in two processes (and Ray its
cluster), 15-60 s per launch on this 2-core machine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from minmo.train.metrics import read_metrics
from pipelines.shards.writer import write_stage_shards
from tests.train.test_train import REPO, _cli, _job, _stage1_samples

pytestmark = pytest.mark.slow

STEPS = 5
STOP = 2
WARMUP = STOP + 1  # the schedule up to the stop does not depend on STEPS


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multinode") / "build"
    write_stage_shards(_stage1_samples(12), root / "shards" / "stage1", "stage1", max_samples=5)
    return root


def _losses(out: Path) -> list[float]:
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, len(metrics) + 1)), "steps logged once"
    return [m["loss"] for m in metrics]


@pytest.fixture(scope="module")
def reference(build: Path, tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    """Five steps of 2-rank DDP under `torchrun --standalone`, with `num_workers: auto` (which
    picks its count after step 4: the batches, hence the losses, must not change)."""
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "out"
    job = _job(
        tmp, out=str(out), steps=STEPS, warmup_steps=WARMUP, save_every=100, num_workers="auto"
    )
    proc = _cli(job, build, nproc=2)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-4000:]
    assert "num_workers auto -> " in log, log[-4000:]
    losses = _losses(out)
    assert len(losses) == STEPS
    return losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(job: Path, build: Path, steps: int) -> None:
    """One torchrun agent per "node", one rank each, meeting at a c10d rendezvous on the
    loopback; node 0 hosts the rendezvous store."""
    endpoint = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for node in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--node-rank={node}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id=minmo-test-{endpoint}",
            f"--rdzv-conf=is_host={str(node == 0).lower()}",
            "-m",
            "minmo.cli",
            "-q",
            "train",
            str(job),
            "--build",
            str(build),
            "--steps",
            str(steps),
        ]
        procs.append(
            subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    for node, proc in enumerate(procs):
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"node {node}:\n{log[-4000:]}"


def test_two_nodes_resume_and_match_one_node(
    build: Path, reference: list[float], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = _job(tmp_path, out=str(out), steps=STEPS, warmup_steps=WARMUP, save_every=100)
    _two_nodes(job, build, STOP)
    assert (out / "latest").read_text().strip() == f"step-{STOP:08d}"
    assert _losses(out) == reference[:STOP]
    _two_nodes(job, build, STEPS)
    assert _losses(out) == reference
    latest = out / (out / "latest").read_text().strip()
    assert sorted(p.name for p in latest.glob("rank*.pt")) == ["rank0.pt", "rank1.pt"]


def _ray(job: Path, build: Path, steps: int) -> str:
    cmd = [sys.executable, "-m", "minmo.cli", "-q", "train", str(job), "--build", str(build)]
    cmd += ["--ray", "--workers", "2", "--steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return proc.stdout


def test_ray_train_resumes_and_matches_torchrun(
    build: Path, reference: list[float], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = _job(tmp_path, out=str(out), steps=STEPS, warmup_steps=WARMUP, save_every=100)
    first = _ray(job, build, STOP)
    assert f"train 1a on Ray Train (2 workers): {STOP} steps this run (step {STOP})" in first
    assert _losses(out) == reference[:STOP]
    second = _ray(job, build, STEPS)
    assert f"{STEPS - STOP} steps this run (step {STEPS})" in second
    assert f"resumed from {out / f'step-{STOP:08d}'}" in second
    assert _losses(out) == reference
    assert (out / "final" / "export.json").is_file()
    assert (out / "ray").is_dir()  # Ray Train's records beside the checkpoints
