"""The chaos harness (minmo/testing/chaos.py) and the crash test built on it.

Fast tests pin each check of the build comparison on small hand-made builds (a planted
difference must be found, a harmless one must not) and the process tracking on a command that
leaves an orphan behind. The slow tests run a small job (ingest + stage-1 shards of the demo
corpus), SIGKILL its process group mid-ingest and mid-shard-write, rerun it and compare with an
uninterrupted build, as `bench/chaos.py` does at random moments with the whole demo job.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from minmo.testing.build_diff import compare_builds
from minmo.testing.chaos import (
    RUN_ENV,
    KillAt,
    Trial,
    finish_trial,
    first_match,
    run_command,
    run_job,
    run_processes,
)
from schemas.shards import temp_name

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------- the comparison, by check


def _write_build(root: Path) -> Path:
    """A small finished build: two tables, a stage of shards, an export, stats, TensorBoard."""
    rows = [{"recording_id": f"r{i}", "source_uri": f"{root}/src/{i}.wav"} for i in range(4)]
    (root / "recordings").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:2]), root / "recordings" / "u1_0000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), root / "recordings" / "u2_0000.parquet")
    (root / "segments").mkdir()
    pq.write_table(pa.Table.from_pylist([{"segment_id": "s"}]), root / "segments" / "u1_0.parquet")
    stage = root / "shards" / "stage1"
    (stage / "_index").mkdir(parents=True)
    (stage / "stage1-g0000-000000.tar").write_bytes(b"tar bytes")
    (stage / "_index" / "index.json").write_text('{"totals": {"samples": 2}}')
    final = root / "checkpoints" / "1a" / "final"
    final.mkdir(parents=True)
    torch.save({"w": torch.arange(4.0)}, final / "input_projector.pt")
    (final / "export.json").write_text(json.dumps({"stage": "1a", "out": f"{root}/checkpoints"}))
    (root / "checkpoints" / "1a" / "tensorboard").mkdir()
    (root / "checkpoints" / "1a" / "tensorboard" / "events.out.tfevents.1.hostA.7").write_bytes(b"")
    (root / "stats").mkdir()
    stats = {"inputs": {"root": str(root)}, "recordings": {"count": 4}, "elapsed_s": 1.5}
    (root / "stats" / "stats.json").write_text(json.dumps(stats))
    (root / "_state" / "ingest" / "done").mkdir(parents=True)
    (root / "_state" / "ingest" / "done" / "u1.json").write_text("{}")
    return root


@pytest.fixture
def builds(tmp_path: Path) -> tuple[Path, Path]:
    return _write_build(tmp_path / "ref"), _write_build(tmp_path / "cand")


def _findings(builds: tuple[Path, Path]) -> dict[str, list[str]]:
    return {k: v for k, v in compare_builds(*builds).findings.items() if v}


def test_two_builds_of_the_same_job_in_different_folders_match(builds):
    reference, candidate = builds
    # harmless: other wall time, another TensorBoard file name, tensors saved again, rows in
    # other part files
    stats = json.loads((candidate / "stats" / "stats.json").read_text())
    (candidate / "stats" / "stats.json").write_text(json.dumps({**stats, "elapsed_s": 9.0}))
    board = candidate / "checkpoints" / "1a" / "tensorboard"
    (board / "events.out.tfevents.1.hostA.7").rename(board / "events.out.tfevents.2.hostB.9")
    torch.save({"w": torch.arange(4.0)}, candidate / "checkpoints/1a/final/input_projector.pt")
    parts = [candidate / "recordings" / f"u{n}_0000.parquet" for n in (1, 2)]
    rows = pa.concat_tables([pq.read_table(p) for p in reversed(parts)])
    parts[1].unlink()
    pq.write_table(rows, parts[0])
    assert _findings(builds) == {"files": ["missing: recordings/u2_0000.parquet"]}
    assert compare_builds(reference, reference).ok


def test_a_row_lost_or_written_twice_is_found(builds):
    _, candidate = builds
    part = candidate / "recordings" / "u2_0000.parquet"
    table = pq.read_table(part)
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), part)
    [finding] = _findings(builds)["tables"]
    assert finding.startswith("recordings: 0 reference rows missing, 1 rows not in the reference")
    pq.write_table(table.slice(0, 1), part)
    [finding] = _findings(builds)["tables"]
    assert finding.startswith("recordings: 1 reference rows missing, 0 rows not")


def test_a_changed_shard_export_or_statistic_is_found(builds):
    _, candidate = builds
    tar = candidate / "shards" / "stage1" / "stage1-g0000-000000.tar"
    tar.write_bytes(b"tar byteZ")
    torch.save(
        {"w": torch.arange(4.0) + 1e-6}, candidate / "checkpoints/1a/final/input_projector.pt"
    )
    stats = json.loads((candidate / "stats" / "stats.json").read_text())
    stats["recordings"]["count"] = 5
    (candidate / "stats" / "stats.json").write_text(json.dumps(stats))
    found = _findings(builds)
    assert found["shards"] == ["stage1/stage1-g0000-000000.tar: sha256 differs"]
    assert found["exports"] == ["1a/final/input_projector.pt: 1 tensors differ (e.g. w)"]
    assert found["stats"] == ["stats.json $.recordings.count: 4 != 5"]


def test_leftovers_are_found(builds):
    _, candidate = builds
    stage = candidate / "shards" / "stage1"
    planted = stage / temp_name("stage1-g0000-000001.tar", pid=4242)
    planted.write_bytes(b"half a tar")
    (candidate / "_state" / "ingest" / "staging" / "dead-run").mkdir(parents=True)
    board = candidate / "checkpoints" / "1a" / "tensorboard"
    (board / "events.out.tfevents.3.hostA.8").write_bytes(b"")
    found = _findings(builds)
    assert found == {
        "files": [
            "left behind: checkpoints/1a/tensorboard/events.out.tfevents.*",
            f"left behind: shards/stage1/{planted.name}",
            "folder left behind: _state/ingest/staging/",
            "folder left behind: _state/ingest/staging/dead-run/",
        ]
    }


def test_first_match_walks_only_below_the_literal_folders(tmp_path):
    (tmp_path / "shards" / "stage1").mkdir(parents=True)
    assert first_match(tmp_path, "shards/*.tmp-*") is None
    (tmp_path / "shards" / "stage1" / ".x.tar.tmp-1-ab").write_bytes(b"")
    assert first_match(tmp_path, "shards/*.tmp-*") == "shards/stage1/.x.tar.tmp-1-ab"
    assert first_match(tmp_path, "_state/ingest/done/*.json") is None
    assert first_match(tmp_path / "absent", "x/*") is None


# ------------------------------------------------------------------------ process tracking


ORPHAN = f"""
import os, subprocess, sys, time
# a grandchild in a session of its own, as a local Ray's raylet may be: a group kill misses it
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(os.environ[{RUN_ENV!r}])
print("== parent", flush=True)
open(os.path.join(sys.argv[1], "started"), "w").close()
time.sleep(60)
"""


def test_a_killed_run_reports_and_ends_the_processes_it_left(tmp_path):
    command = [sys.executable, "-c", ORPHAN, str(tmp_path)]
    kill = KillAt(when_exists="started")
    outcome = run_command(command, tmp_path, tmp_path / "run.log", kill, grace_s=1)
    assert outcome.killed and outcome.step == "parent" and outcome.trigger == "started"
    [survivor] = outcome.survivors
    assert "time.sleep(60)" in survivor and "subprocess" not in survivor
    token = (tmp_path / "run.log").read_text().splitlines()[0]
    assert run_processes(token) == []  # reported, then ended


def test_a_run_that_leaves_nothing_reports_nothing(tmp_path):
    command = [sys.executable, "-c", f"import os; print(os.environ[{RUN_ENV!r}])"]
    outcome = run_command(command, tmp_path, tmp_path / "run.log", grace_s=1)
    assert outcome.returncode == 0 and outcome.survivors == []
    token = (tmp_path / "run.log").read_text().strip()
    assert len(token) == 32 and run_processes(token) == []


# ------------------------------------------------------------------- the crash test (slow)

# Kill points: the first unit ingest commits (later units not yet), and the first shard tar
# being written (a writer's temp file).
MID_INGEST = KillAt(when_exists="_state/ingest/done/*.json")
MID_SHARD_WRITE = KillAt(when_exists="shards/*.tmp-*")


def _small_job(where: Path) -> Path:
    """The demo job's ingest and stage-1 shards on its corpus: the steps a kill must survive, in
    four ingest units and several shards, without the minutes of the whole demo."""
    demo = yaml.safe_load((REPO / "jobs" / "demo.yaml").read_text())
    shards = {**demo["shards"], "stages": ["stage1"], "max_samples": 32}
    shards.pop("label_source")  # no annotate step here: the corpus' own labels only
    spec = {
        "steps": ["demo-data", "ingest", "shards", "verify"],
        "demo-data": {**demo["demo-data"], "annotator": False},
        "ingest": {**demo["ingest"], "files_per_unit": 16},
        "shards": shards,
        "verify": demo["verify"],
    }
    job = where / "job.yaml"
    job.write_text(yaml.safe_dump(spec).replace("{job_dir}", str(REPO / "jobs")))
    return job


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(job, its uninterrupted build)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed: apt-get install espeak-ng")
    root = tmp_path_factory.mktemp("chaos")
    job = _small_job(root)
    outcome = run_job(job, root / "reference", root / "reference.log", timeout_s=900)
    assert outcome.returncode == 0, outcome.log.read_text()[-3000:]
    return job, root / "reference"


def _trial(reference: tuple[Path, Path], kill: KillAt, name: str) -> tuple[Trial, list[str]]:
    """A build killed once at `kill`, then rerun and checked; also the build as the kill left
    it (its file list), to show that the kill landed where it was meant to."""
    job, ref = reference
    build = ref.parent / name
    killed = run_job(job, build, build.parent / f"{name}.kill.log", kill, timeout_s=900)
    assert killed.killed, f"the run ended before {kill.describe()}: {killed.describe()}"
    left = _files(build)
    return finish_trial(1, job, ref, build, [killed], timeout_s=900), left


def _done_markers(files: list[str], step: str) -> list[str]:
    return [f for f in files if f.startswith(f"_state/{step}/done/")]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_job_killed_mid_ingest_reruns_to_the_same_build(reference):
    trial, left = _trial(reference, MID_INGEST, "mid-ingest")
    [kill] = trial.kills
    assert kill.step == "ingest" and kill.trigger and kill.trigger.endswith(".json"), kill
    all_units = _done_markers(_files(reference[1]), "ingest")
    assert 1 <= len(_done_markers(left, "ingest")) < len(all_units) == 4, left
    assert trial.ok, trial.line() + "\n" + trial.comparison.describe()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_job_killed_mid_shard_write_reruns_to_the_same_build(reference):
    trial, left = _trial(reference, MID_SHARD_WRITE, "mid-shard-write")
    [kill] = trial.kills
    assert kill.step == "shards" and ".tmp-" in (kill.trigger or ""), kill
    # The writer's temp file may or may not outlive the kill (Ray's workers run in sessions of
    # their own and may finish, or clean up, first): the `files` check judges what is left.
    assert len(_done_markers(left, "shards")) < len(_done_markers(_files(reference[1]), "shards"))
    assert trial.ok, trial.line() + "\n" + trial.comparison.describe()


def _files(build: Path) -> list[str]:
    return sorted(str(p.relative_to(build)) for p in build.rglob("*") if p.is_file())
