"""Every step on a local three-node Ray cluster writes what a single-node run writes, and a
worker node lost in the middle of a step loses nothing committed: the rerun completes.

One small build (a slice of the demo corpus, two text dialogues, shards of all four stages) is
made three times at the same path, since ids still name the build's own audio by path: first on
the session's single-node Ray (the reference), then on a `ray.cluster_utils.Cluster` of three
one-CPU nodes, and finally through the shards step again, in a `minmo run` child process that
finds the cluster through RAY_ADDRESS (as `ray job submit` gives it), with a worker node removed
as soon as the first shard is committed.

Outputs are compared per step: each table's rows (from that step's own part files, sorted), the
bytes of every file it writes beside the tables (synthesised audio, shard tars and indexes), and
stats.json less its wall time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from minmo.cli.jobs import run_job
from pipelines.build import BuildDir, StepLedger
from pipelines.shards.records import reopen_generation
from pipelines.verify import verify_shards
from schemas.shards import split_dir

# The first test pays for the module's builds: the job on one node, then on a 3-node cluster.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "jobs" / "data"
STEPS = ["ingest", "synthesize", "diarize", "label-turns", "shards", "stats"]
# What each step writes beside its tables (under the build), compared byte for byte.
FILES = {"synthesize": "audio", "shards": "shards"}
NODE_LOSS_TIMEOUT_S = 300


def _manifest(src: Path) -> Path:
    """A slice of the demo corpus: the utterances the bundled replies answer (synthesize's real
    queries), two more languages, a stereo and a mono conversation, and a missing file."""
    rows = [json.loads(line) for line in (src / "manifest.jsonl").read_text().splitlines()]
    queries = {
        json.loads(line)["query_text"]
        for line in (DATA / "demo_responses.jsonl").read_text().splitlines()
    }
    picked = [r for r in rows if r["text"] in queries]
    for language in ("de", "zh"):
        picked.append(next(r for r in rows if r["task"] == "asr" and r["language"] == language))
    for stem in ("en_weekend_hike", "en_missing_parcel"):  # stereo (channels), mono (offline)
        picked.append(next(r for r in rows if r["path"].endswith(f"{stem}.wav")))
    picked.append({**picked[0], "path": "utterances/en/gone.wav"})
    manifest = src / "cluster.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in picked))
    return manifest


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sources and the job spec every run of this module shares."""
    from minmo.demo import build_demo_corpus
    from minmo.testing.tiny_models import build_tiny_checkpoint

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed: apt-get install espeak-ng")
    root = tmp_path_factory.mktemp("cluster")
    src = root / "src"
    build_demo_corpus(src, seed=0, progress=False)
    dialogues = src / "dialogues.jsonl"
    dialogues.write_text(
        "".join((DATA / "demo_dialogues.jsonl").read_text().splitlines(keepends=True)[:2])
    )
    demo = yaml.safe_load((REPO / "jobs" / "demo.yaml").read_text())
    spec = {
        "steps": [*STEPS[:-1], "verify", "stats"],
        "ingest": {"src": str(_manifest(src)), "corpus": "minmo-demo", "files_per_unit": 3},
        "synthesize": {
            **demo["synthesize"],
            "dialogues": [str(dialogues), str(DATA / "demo_dialogues_unusable.jsonl")],
            "responses": str(DATA / "demo_responses.jsonl"),
            "dialogues_per_unit": 1,
        },
        "diarize": {"backend": "auto", "num_speakers": 2, "recordings_per_unit": 1},
        "label-turns": {"seed": 0, "recordings_per_unit": 1},
        "shards": {
            **demo["shards"],
            "samples": {"translations": [str(DATA / "demo_translations.jsonl")]},
            # stage3 left out for time: its samples come from synthesize, compared above.
            "stages": ["stage1", "stage2", "stage4"],
            "max_samples": 4,
            "speech_tokenizer": str(build_tiny_checkpoint(root / "s3tiny.pt")),
        },
        "verify": {"dir": "{build}/shards"},
        # One DuckDB thread: with several, a float sum's order (so its 6th decimal) varies from
        # run to run on any Ray, and this compares runs, not summation orders.
        "stats": {"memory_limit": "512MB", "threads": 1},
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return {"root": root, "spec": path, "build": root / "build"}


def _run(job: dict[str, Any], keep_as: str) -> Path:
    """Run the whole spec at the shared build path, then move the build aside as `keep_as`."""
    build = job["build"]
    assert not build.exists()
    run_job(job["spec"], str(build), progress=False)
    kept = job["root"] / keep_as
    build.rename(kept)
    return kept


@pytest.fixture(scope="module")
def reference(job: dict[str, Any], ray_local: Any) -> Path:
    """The build from the session's single-node Ray."""
    return _run(job, "reference")


@pytest.fixture(scope="module")
def cluster(reference: Path) -> Iterator[Any]:
    """Three one-CPU nodes on this machine; the test process is connected as a driver.

    Depends on `reference` so that the single-node build is made before the session's local Ray
    is shut down; the local instance is started again afterwards for the modules that follow."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    node_args = {"num_cpus": 1, "object_store_memory": 300 * 2**20}
    cluster = Cluster(
        initialize_head=True, head_node_args={**node_args, "include_dashboard": False}
    )
    for _ in range(2):
        cluster.add_node(**node_args)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        # As tests/conftest.py's `ray_local` starts it.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


@pytest.fixture(scope="module")
def on_cluster(job: dict[str, Any], cluster: Any) -> Path:
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 3 and ray.cluster_resources()["CPU"] == 3
    return _run(job, "on-cluster")


def _canonical(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, default=repr)


def _tables(build: Path) -> dict[str, dict[str, list[str]]]:
    """step -> table -> its rows (canonical JSON, sorted), from the part files the step owns."""
    out: dict[str, dict[str, list[str]]] = {}
    for part in sorted(build.glob("*/*.parquet")):
        step, _ = StepLedger.table_file_owner(part.name)
        rows = [_canonical(r) for r in pq.read_table(part).to_pylist()]
        out.setdefault(step, {}).setdefault(part.parent.name, []).extend(rows)
    return {s: {t: sorted(rows) for t, rows in tables.items()} for s, tables in out.items()}


def _files(root: Path) -> dict[str, str]:
    """Every file under `root` -> its sha256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _stats(build: Path) -> dict[str, Any]:
    return json.loads((build / "stats" / "stats.json").read_text())


def _outputs(build: Path, step: str) -> dict[str, Any]:
    out: dict[str, Any] = {"tables": _tables(build).get(step, {})}
    if step in FILES:
        out["files"] = _files(build / FILES[step])
    if step == "stats":
        out["stats"] = _stats(build)
    return out


@pytest.mark.parametrize("step", STEPS)
def test_cluster_run_equals_single_node_run(reference: Path, on_cluster: Path, step: str) -> None:
    ours, theirs = _outputs(on_cluster, step), _outputs(reference, step)
    assert ours["tables"] or ours.get("files") or ours.get("stats"), f"{step} wrote nothing"
    for table in sorted(set(ours["tables"]) | set(theirs["tables"])):
        assert ours["tables"].get(table) == theirs["tables"].get(table), f"{step}: {table}"
    assert ours.get("files") == theirs.get("files"), f"{step}: files"
    assert ours.get("stats") == theirs.get("stats"), f"{step}: stats.json"


def test_steps_ran_on_every_node(on_cluster: Path, cluster: Any) -> None:
    """The shard writers (workers, not the driver) wrote from more than one node: the cluster
    comparison above is not a single-node run in disguise."""
    done = on_cluster / "_state" / "shards" / "done"
    nodes = {json.loads(p.read_text())["written_by"]["node"] for p in done.glob("*.json")}
    assert len(nodes) >= 2, nodes


def _sample_keys(shards: Path) -> list[str]:
    keys = []
    for tar in sorted(shards.rglob("*.tar")):
        with tarfile.open(fileobj=io.BytesIO(tar.read_bytes())) as f:
            keys += [m.name.split(".", 1)[0] for m in f.getmembers() if m.name.endswith(".json")]
    return keys


def test_a_node_lost_mid_step_loses_no_committed_work(
    job: dict[str, Any], reference: Path, on_cluster: Path, cluster: Any
) -> None:
    """The shards step in a `minmo run` child that joins the cluster through RAY_ADDRESS; a
    worker node is removed once the first shard is committed. Whatever the run then does (fail,
    or finish on the two nodes left), every shard committed before the loss stays as it was, and
    a rerun completes with the reference's shards: same bytes, no sample twice."""
    build = job["build"]
    # "shards" also leaves out _state/shards: the copy has no shard step history ...
    shutil.copytree(on_cluster, build, ignore=shutil.ignore_patterns("shards", "stats"))
    # ... but stage 1's plan, reopened: what a run stopped after planning leaves (or `minmo
    # doctor` after clearing every marker). The child's time then goes to the shard writes,
    # where the node is lost, not to planning again what the cluster run above planned.
    state = Path("_state") / "shards" / "stage1"
    shutil.copytree(on_cluster / state, build / state)
    assert reopen_generation(BuildDir(str(build)), "stage1", 0)
    spec = yaml.safe_load(job["spec"].read_text())
    shards_only = job["root"] / "shards-only.yaml"
    stage1 = {**spec["shards"], "stages": ["stage1"]}  # its many small shards suffice
    shards_only.write_text(yaml.safe_dump({"steps": ["shards"], "shards": stage1}))
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "RAY_AUTH_MODE": "disabled"}
    child = subprocess.Popen(
        [sys.executable, "-m", "minmo.cli", "-q", "run", str(shards_only), "--build", str(build)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(child.stdout or []), daemon=True)
    reader.start()
    done = build / "_state" / "shards" / "done"
    deadline = time.monotonic() + NODE_LOSS_TIMEOUT_S
    while not any(done.glob("*.json")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    committed = {p.name: p.read_bytes() for p in done.glob("*.json")}
    assert committed, "no shard committed before the run ended:\n" + "".join(output)[-3000:]
    worker = next(n for n in cluster.list_all_nodes() if n is not cluster.head_node)
    cluster.remove_node(worker)
    try:
        child.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        child.kill()  # hung on the lost node: the rerun below must still complete
        child.wait()
    reader.join(timeout=10)
    lost_run_rc = child.returncode

    # Nothing committed before the loss was undone or rewritten.
    for name, marker in committed.items():
        assert (done / name).read_bytes() == marker, name
        for shard in json.loads(marker)["shards"]:
            stage_dir = str(build / "shards" / json.loads(marker)["stage"])
            tar = Path(split_dir(stage_dir, shard.get("split", ""))) / shard["name"]
            assert hashlib.sha256(tar.read_bytes()).hexdigest() == shard["sha256"], tar

    run_job(shards_only, str(build), progress=False)
    ours, theirs = build / "shards" / "stage1", reference / "shards" / "stage1"
    assert _files(ours) == _files(theirs), f"the run that lost a node ended with {lost_run_rc}"
    keys = _sample_keys(ours)
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(_sample_keys(theirs))
    verified = verify_shards(str(build / "shards"))  # one entry per split: "stage1/train", ...
    assert {k.split("/")[0] for k in verified} == {"stage1"}
    assert all(problems == [] for problems in verified.values()), verified
