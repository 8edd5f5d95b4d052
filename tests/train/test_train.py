"""The trainer on real shards (built from ../shared/data through the shard step): one process,
2-process DDP (gloo) and FSDP2 under torchrun, an exact resume after SIGTERM, and a checkpoint
that holds exactly the stage recipe's parameters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pytest
import yaml
from torch.distributed.checkpoint import FileSystemReader

from minmo.audio.encode import flac_bytes
from minmo.cli import main
from minmo.model.minmo import SpecialIds
from minmo.testing.tiny_models import build_tiny_checkpoint
from minmo.tokens.text import load_text_tokenizer
from minmo.train.config import TrainConfig
from minmo.train.metrics import read_metrics
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.run import run_ingest
from pipelines.shards.step import ShardsConfig, run_shards
from pipelines.shards.writer import write_stage_shards
from tests.objectstore import s3_filesystem, upload_tree

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def build(ray_local, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    texts = dict(
        line.split(" ", 1)
        for line in (shared_data / "asr_speechbrain_en/text").read_text().splitlines()
        if line.strip()
    )
    rows = [
        {"path": str(p), "text": texts[p.stem].strip(), "language": "en"}
        for p in sorted((shared_data / "asr_speechbrain_en").glob("*.wav"))
        if p.stem in texts
    ]
    manifest = root / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "build"
    run_ingest(str(manifest), str(out), IngestConfig(corpus="sb"), progress=False)
    # Small uneven shards: 5 per shard, fewer shards than 2 ranks x 2 workers would like.
    config = ShardsConfig(
        stages=["stage1"],
        speech_tokenizer=str(build_tiny_checkpoint(root / "s3.pt")),
        max_samples=9,
    )
    run_shards(str(out), config, progress=False)
    return out


def _job(tmp: Path, **fields: Any) -> Path:
    spec = {
        "stage": "1a",
        "model": {"size": "tiny"},
        "steps": 6,
        "lr": 3e-3,
        "warmup_steps": 1,
        "max_samples": 2,
        "save_every": 2,
        "num_workers": 1,
        "tensorboard": False,
        **fields,
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(job: Path, build: Path, nproc: int = 1, **popen: Any):
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    cmd = [*launcher, "-m", "minmo.cli", "-q", "train", str(job), "--build", str(build)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def _run(job: Path, build: Path, nproc: int = 1) -> str:
    proc = _cli(job, build, nproc)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def test_single_process_trains_and_checkpoints_only_its_recipe(build: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "ckpt"
    _run(_job(tmp_path, out=str(out_dir)), build)
    metrics = read_metrics(out_dir)
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert all(m["loss"] == m["loss"] and m["loss"] > 0 for m in metrics)  # finite, positive
    for key in ("lr", "grad_norm", "samples_per_s", "tokens_per_s", "audio_s_per_s"):
        assert metrics[-1][key] > 0
    latest = out_dir / (out_dir / "latest").read_text().strip()
    keys = FileSystemReader(str(latest)).read_metadata().state_dict_metadata
    weights = {k.removeprefix("model.") for k in keys if k.startswith("model.")}
    # Parameters: the recipe's only. Buffers (the encoder's CMVN) are always saved.
    params = {k for k in weights if ".cmvn_" not in k}
    assert params and all(k.startswith("input_projector.") for k in params)
    # keep_last=2 with save_every=2 over 6 steps: steps 4 and 6 remain.
    assert sorted(p.name for p in out_dir.glob("step-*")) == ["step-00000004", "step-00000006"]
    export = json.loads((out_dir / "final" / "export.json").read_text())
    assert export["modules"] == ["input_projector"]


def test_resume_after_sigterm_gives_the_same_losses(build: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    _run(_job(tmp_path, out=str(straight), steps=8, save_every=100), build)
    expected = [m["loss"] for m in read_metrics(straight)]

    killed = tmp_path / "killed"
    job = _job(tmp_path, out=str(killed), steps=8, save_every=100)
    proc = _cli(job, build)
    deadline = time.time() + 300
    while len(read_metrics(killed)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    stopped_at = len(read_metrics(killed))
    assert 3 <= stopped_at < 8, "the run must stop early, at a step boundary, with a checkpoint"
    assert (killed / "latest").is_file() and not (killed / "final").exists()
    _run(job, build)
    resumed = [m["loss"] for m in read_metrics(killed)]
    assert [m["step"] for m in read_metrics(killed)] == list(range(1, 9))
    assert resumed == expected  # bit-exact on CPU


def test_a_killed_run_resumes_without_repeated_logs_and_a_finished_one_says_so(
    build: Path, tmp_path: Path
) -> None:
    """SIGKILL after the step-4 checkpoint: steps 5.. are redone, yet logged once, in one
    TensorBoard event file; a rerun of the finished stage says it was finished."""
    out = tmp_path / "killed"
    job = _job(tmp_path, out=str(out), steps=8, save_every=4, log_every=1, tensorboard=True)
    proc = _cli(job, build, start_new_session=True)
    deadline = time.time() + 300
    while len(read_metrics(out)) < 6 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert (out / "latest").read_text().strip() == "step-00000004" and len(read_metrics(out)) >= 6
    _run(job, build)
    assert [m["step"] for m in read_metrics(out)] == list(range(1, 9))
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    again = _run(job, build)
    assert "already finished (8 steps)" in again and "nan" not in again


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes(build: Path, tmp_path: Path, parallel: str) -> None:
    out_dir = tmp_path / parallel
    # Shards of 9 samples, the last one short: ranks read unequal shards (tests/train/test_data.py
    # covers epoch roll-over in lockstep).
    _run(_job(tmp_path, out=str(out_dir), parallel=parallel, steps=5, save_every=5), build, nproc=2)
    metrics = read_metrics(out_dir)
    assert [m["step"] for m in metrics] == list(range(1, 6))
    assert all(m["loss"] == m["loss"] and m["loss"] > 0 for m in metrics)
    latest = out_dir / (out_dir / "latest").read_text().strip()
    assert sorted(p.name for p in latest.glob("rank*.pt")) == ["rank0.pt", "rank1.pt"]
    assert (out_dir / "final" / "input_projector.pt").is_file()


def _stage1_samples(n: int) -> list[dict[str, Any]]:
    """Hand-made stage-1 (ASR) samples: noise audio, text `x <speech> </speech> y y y <im_end>`."""
    special = SpecialIds.from_tokenizer(load_text_tokenizer(None))
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        frames = int(rng.integers(4000, 16000))
        text = [5, special.speech_start, special.speech_end, 7, 8, 9, special.turn_end]
        out.append(
            {
                "__key__": f"u{i:03d}",
                "json": {"task": "asr", "duration_s": frames / 16000, "target_start": 3},
                "flac": flac_bytes((rng.standard_normal((1, frames)) * 0.1).astype(np.float32)),
                "text_tokens.npy": np.array(text, dtype=np.int64),
            }
        )
    return out


@pytest.mark.slow
def test_shards_on_s3_train_as_on_local_disk(tmp_path: Path, moto_s3_options) -> None:
    """`minmo train --build s3://... --out LOCAL` streams the same shards from the bucket: the
    same losses."""
    build = tmp_path / "build"
    write_stage_shards(_stage1_samples(12), build / "shards" / "stage1", "stage1", max_samples=5)
    s3_build = upload_tree(build, moto_s3_options, prefix="build")
    job = _job(tmp_path, steps=3, save_every=100)
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main(["-q", "train", str(job), "--build", str(build), "--out", str(local)]) == 0
    options = json.dumps(moto_s3_options)
    argv = ["-q", "train", str(job), "--build", s3_build, "--storage-options", options]
    assert main([*argv, "--out", str(remote)]) == 0
    assert [m["loss"] for m in read_metrics(remote)] == [m["loss"] for m in read_metrics(local)]
    assert (remote / "final" / "export.json").is_file()


def test_locations_on_an_object_store_build() -> None:
    """Checkpoints and init_from may live on the build's store; a scheme the trainer cannot
    serve, or a staging folder that is not local, is an error naming it."""
    build = "s3://b/build/"
    config = TrainConfig(stage="1b", init_from="s3://b/build/checkpoints/1a/final")
    assert config.locations(build) == (
        "s3://b/build/shards/stage1",
        "s3://b/build/checkpoints/1b",
        "s3://b/build/checkpoints/1a/final",
    )
    assert TrainConfig(stage="1a", out="file:///ck").locations(build)[1] == "/ck"
    with pytest.raises(ValueError, match=r"minmo train cannot serve ftp://"):
        TrainConfig(stage="1a", out="ftp://h/ck").locations(build)
    with pytest.raises(ValueError, match=r"minmo train cannot serve s3://"):
        TrainConfig(stage="1a", staging="s3://b/tmp")


@pytest.mark.slow
def test_checkpoints_on_s3_commit_resume_and_init_from(
    tmp_path: Path, moto_s3_options, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """On an s3:// build the checkpoints, metrics and export land in the bucket (staged
    locally, the staging removed at the end); a resume after a crash mid-upload takes the last
    committed checkpoint (the `latest` pointer), never the half-uploaded one, and gives the
    same losses; the next stage's init_from reads the export from the bucket."""
    build = tmp_path / "build"
    write_stage_shards(_stage1_samples(12), build / "shards" / "stage1", "stage1", max_samples=5)
    s3_build = upload_tree(build, moto_s3_options, prefix="build")
    s3 = s3_filesystem(moto_s3_options)
    ckpt = f"{s3_build.removeprefix('s3://')}/checkpoints/1a"
    local = tmp_path / "local"
    job = _job(tmp_path, steps=4, save_every=2)
    assert main(["-q", "train", str(job), "--build", str(build), "--out", str(local)]) == 0
    expected = [m["loss"] for m in read_metrics(local)]

    cwd, staging = tmp_path / "cwd", tmp_path / "staging"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    options = json.dumps(moto_s3_options)
    argv = ["-q", "train", str(job), "--build", s3_build, "--storage-options", options]
    argv += ["--staging", str(staging)]
    assert main(argv) == 0
    assert f"exported to s3://{ckpt}/final" in capsys.readouterr().out

    def read(key: str) -> bytes:
        with s3.open_input_stream(f"{ckpt}/{key}") as f:
            return f.read()

    def keys() -> set[str]:
        infos = s3.get_file_info(pafs.FileSelector(ckpt, recursive=True))
        return {i.path.removeprefix(f"{ckpt}/") for i in infos if i.is_file}

    def losses() -> list[float]:
        return [json.loads(line)["loss"] for line in read("metrics.jsonl").splitlines()]

    assert read("latest") == b"step-00000004\n"
    assert {k.split("/")[0] for k in keys()} >= {"step-00000002", "step-00000004", "final"}
    assert {"step-00000004/.metadata", "step-00000004/rank0.pt"} <= keys()
    assert json.loads(read("final/export.json"))["modules"] == ["input_projector"]
    assert losses() == expected
    assert not any(".tmp" in k for k in keys())
    assert list(staging.iterdir()) == [] and list(cwd.iterdir()) == []

    # A crash after step 2's commit, with step 4 and the export half uploaded.
    with s3.open_output_stream(f"{ckpt}/latest") as f:
        f.write(b"step-00000002\n")
    s3.delete_file(f"{ckpt}/step-00000004/.metadata")
    s3.delete_file(f"{ckpt}/final/export.json")
    with s3.open_output_stream(f"{ckpt}/metrics.jsonl") as f:
        f.write(b"".join(line + b"\n" for line in read("metrics.jsonl").splitlines()[:2]))
    assert main(argv) == 0
    assert f"resumed from s3://{ckpt}/step-00000002" in capsys.readouterr().out
    assert losses() == expected  # bit-exact on CPU, as a local resume
    assert read("latest") == b"step-00000004\n"
    assert "step-00000004/.metadata" in keys() and "final/export.json" in keys()

    # The next stage starts from the export in the bucket (its spec's default init_from).
    job_1b = _job(tmp_path, stage="1b", init_from="{build}/checkpoints/1a/final", steps=1)
    assert main(["-q", "train", str(job_1b), *argv[3:]]) == 0
    with s3.open_input_stream(
        f"{s3_build.removeprefix('s3://')}/checkpoints/1b/final/export.json"
    ) as f:
        assert json.loads(f.read())["modules"] == ["input_projector", "voice_encoder"]
    assert list(staging.iterdir()) == [] and list(cwd.iterdir()) == []
