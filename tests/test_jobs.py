import pytest

from minmo.cli.jobs import load_job
from minmo.cli.steps import STEPS, StepSpec
from minmo.config import ConfigError


def test_demo_job_parses(tmp_path):
    plan = load_job("jobs/demo.yaml", str(tmp_path))
    assert [step.name for step, _ in plan] == [
        "demo-data",
        "ingest",
        "synthesize",
        "annotate",
        "diarize",
        "label-turns",
        "shards",
        "verify",
        "train",
        "eval",
        "stats",
        "plan",
    ]
    ingest = plan[1][1]
    assert ingest["src"].startswith(str(tmp_path))


def test_unknown_key_names_the_nearest_valid_one(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("steps: [ingest]\ningest:\n  src: x\n  max_segmnt_s: 20\n")
    with pytest.raises(ConfigError, match='did you mean "max_segment_s"'):
        load_job(spec, str(tmp_path))


def test_unknown_step_and_top_level_key(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("steps: [ingst]\n")
    with pytest.raises(ConfigError, match='did you mean "ingest"'):
        load_job(spec, str(tmp_path))
    spec.write_text("steps: [ingest]\nstepz: 1\n")
    with pytest.raises(ConfigError, match='did you mean "steps"'):
        load_job(spec, str(tmp_path))


def test_step_sections_are_checked_against_their_configs(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("steps: [diarize, label-turns]\ndiarize:\n  backnd: offline\n")
    with pytest.raises(ConfigError, match='did you mean "backend"'):
        load_job(spec, str(tmp_path))
    spec.write_text("steps: [label-turns]\nlabel-turns:\n  hop: 0.12\n")
    with pytest.raises(ConfigError, match='did you mean "hop_s"'):
        load_job(spec, str(tmp_path))


# ---------------------------------------------------------------- builds on an object store


def _spec(tmp_path, text):
    spec = tmp_path / "spec" / "job.yaml"
    spec.parent.mkdir(exist_ok=True)
    spec.write_text(text)
    return spec


def test_a_uri_build_stays_a_uri(tmp_path):
    spec = _spec(tmp_path, "steps: [demo-data, ingest]\ningest: {src: '{build}/src/m.jsonl'}\n")
    plan = load_job(spec, "s3://bkt/demo/")
    sections = {step.name: section for step, section in plan}
    assert sections["ingest"]["src"] == "s3://bkt/demo/src/m.jsonl"
    assert sections["demo-data"] == {}  # its `out` defaults to {build}/demo-src at run time


def test_a_local_build_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path, "steps: [ingest]\ningest: {src: '{build}/src'}\n")
    [(_, section)] = load_job(spec, "b/../build")
    assert section["src"] == f"{tmp_path}/build/src"
    [(_, section)] = load_job(spec, f"file://{tmp_path}/b")
    assert section["src"] == f"{tmp_path}/b/src"


def test_a_collapsed_uri_build_is_refused(tmp_path):
    spec = _spec(tmp_path, "steps: [ingest]\ningest: {src: x}\n")
    with pytest.raises(ConfigError, match="'s3://bkt/demo'"):
        load_job(spec, "s3:/bkt/demo")


@pytest.fixture
def local_only_step(monkeypatch):
    """A step that takes local paths only. Every shipped step serves object stores; the refusal
    stays for the next one that does not."""

    step = StepSpec(
        config="minmo.cli.steps:VerifyConfig",
        run="tests.test_jobs:_never_run",
        help="a step that reads local paths only",
        object_store=False,
    )
    monkeypatch.setitem(STEPS, "local-only", step)
    return "local-only"


def _never_run(*_):
    raise AssertionError("a refused job must not run any step")


def test_every_shipped_step_serves_object_stores():
    assert [name for name, step in STEPS.items() if not step.object_store] == []


def test_a_local_only_step_refuses_a_uri_before_any_step_runs(tmp_path, local_only_step):
    spec = _spec(tmp_path, "steps: [demo-data, local-only]\n")
    with pytest.raises(ConfigError, match=r"'local-only' cannot serve s3:// paths"):
        load_job(spec, "s3://bkt/demo")
    spec = _spec(tmp_path, "steps: [demo-data, local-only]\nlocal-only: {dir: 'gs://b/x'}\n")
    with pytest.raises(ConfigError, match=r"'local-only' cannot serve gs:// paths"):
        load_job(spec, str(tmp_path / "build"))


def test_storage_options_reach_every_step_that_takes_them(tmp_path):
    spec = _spec(
        tmp_path,
        "steps: [demo-data, ingest, synthesize, diarize, label-turns, shards, verify, train, "
        "stats]\n"
        "storage_options: {region: eu-west-1, access_key: spec}\n"
        "ingest: {src: x}\n"
        "diarize: {storage_options: {region: us-east-2}}\n",
    )
    plan = load_job(spec, "s3://bkt/demo", storage_options={"access_key": "cli"})
    options = {step.name: section["storage_options"] for step, section in plan}
    assert options.pop("diarize") == {"region": "us-east-2", "access_key": "cli"}
    assert all(o == {"region": "eu-west-1", "access_key": "cli"} for o in options.values())
    assert len(options) == 8
    spec.write_text("steps: [ingest]\ningest: {src: x}\n")
    [(_, section)] = load_job(spec, "s3://bkt/demo")
    assert "storage_options" not in section  # none given: each step's own default


def test_cli_run_refuses_before_writing_anything(tmp_path, monkeypatch, capsys, local_only_step):
    from minmo.cli import main

    spec = _spec(tmp_path, "steps: [demo-data, local-only]\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["run", str(spec), "--build", "s3://bkt/demo"]) == 2
    assert "'local-only' cannot serve s3://" in capsys.readouterr().err
    assert main(["run", str(spec), "--build", "x", "--storage-options", "{oops"]) == 2
    assert "--storage-options is not valid JSON" in capsys.readouterr().err
    assert list(cwd.iterdir()) == []


DEMO_TABLE_STEPS = ["demo-data", "ingest", "synthesize", "diarize", "label-turns"]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the demo's table steps against a local S3 server (up to 600 s)
def test_demo_job_table_steps_on_s3(tmp_path, moto_s3_options):
    """The demo job's steps up to label-turns with `--build s3://…`: every table lands on the
    store, every audio URI points into it, no read fails (quarantine holds only the bundled
    broken dialogues), and nothing is written to a local path (cwd stays empty)."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import pyarrow.fs as pafs
    import yaml

    from minmo.demo import build_demo_corpus
    from pipelines.build import BuildDir, is_build_key
    from pipelines.ingest.run import read_table

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed: apt-get install espeak-ng")
    repo = Path(__file__).resolve().parents[1]
    demo = yaml.safe_load((repo / "jobs" / "demo.yaml").read_text())
    text = yaml.safe_dump(
        {"steps": DEMO_TABLE_STEPS, **{name: demo[name] for name in DEMO_TABLE_STEPS}}
    ).replace("{job_dir}", str(repo / "jobs"))
    spec = _spec(tmp_path, text)
    bucket = "jobs-demo-tables"  # moto's store is shared within the process: a bucket of our own
    s3 = pafs.S3FileSystem(**moto_s3_options, allow_bucket_creation=True)
    s3.create_dir(bucket)
    build = f"s3://{bucket}/demo"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    options = json.dumps(moto_s3_options)
    command = ["-m", "minmo.cli", "-q", "run", str(spec), "--build", build]
    result = subprocess.run(
        [sys.executable, *command, "--storage-options", options],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(cwd.iterdir()) == [], "a step wrote to a local relative path"

    keys = [i.path for i in s3.get_file_info(pafs.FileSelector(bucket, recursive=True))]
    assert [k for k in keys if not k.startswith(f"{bucket}/demo")] == []
    assert not [k for k in keys if ".tmp" in k], "temporary files left behind"
    for step in ("ingest", "synthesize", "diarize", "label-turns"):
        assert f"{bucket}/demo/_state/{step}/summary.json" in keys

    # demo-data on the store is byte for byte the local corpus.
    local = build_demo_corpus(tmp_path / "local-src", seed=0, progress=False)
    for path in sorted((tmp_path / "local-src").rglob("*")):
        if path.is_file():
            rel = path.relative_to(tmp_path / "local-src")
            with s3.open_input_stream(f"{bucket}/demo/demo-src/{rel}") as f:
                assert f.read() == path.read_bytes(), rel

    b = BuildDir(build, **moto_s3_options)
    tables = {
        name: read_table(b, name).to_pylist()
        for name in (
            "recordings",
            "segments",
            "quarantine",
            "dialogues",
            "s2s_samples",
            "turns",
            "events",
            "frame_labels",
        )
    }
    assert all(tables.values()), {name: len(rows) for name, rows in tables.items()}
    recordings = tables["recordings"]
    assert sum(r["source_uri"].startswith(f"{build}/demo-src/") for r in recordings) == (
        local.utterances + local.conversations
    )
    # What synthesize wrote is named by its build key (relocatable), read under the build.
    synthesized = [r for r in recordings if is_build_key(r["source_uri"])]
    assert synthesized and all(r["source_key"] == r["source_uri"] for r in synthesized)
    assert all(
        r["source_uri"].startswith(f"{build}/") or is_build_key(r["source_uri"]) for r in recordings
    )
    for sample in tables["s2s_samples"]:
        for uri in (sample["user_audio_uri"], sample["assistant_audio_uri"]):
            where = b.resolve_key(uri) if is_build_key(uri) else uri
            assert where.removeprefix("s3://") in keys, uri
    assert {q["reason_code"] for q in tables["quarantine"]} == {"bad_dialogue"}
    conversations = {r["recording_id"] for r in recordings if r["task"] == "conversation"}
    assert {t["recording_id"] for t in tables["turns"]} == conversations
    # one sample per speaker: two per two-party call, 3-4 per demo meeting
    speakers = {(t["recording_id"], t["speaker"]) for t in tables["turns"]}
    assert len(tables["frame_labels"]) == len(speakers) > 2 * len(conversations)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the whole demo job against a local S3 server (up to 1800 s)
def test_demo_job_on_s3(tmp_path, moto_s3_options):
    """The whole demo job (jobs/demo.yaml, every step) with `--build s3://…`: every step
    succeeds, the shards verify on the store, the seven training stages keep their checkpoints,
    metrics and exports in the bucket (each stage's init_from read from there), the stats land
    there, and nothing is written to a local relative path or left in the trainer's staging."""
    import json
    import shutil
    import subprocess
    import sys
    import uuid
    from pathlib import Path

    import pyarrow.fs as pafs
    import yaml

    from minmo.train.store import staging_dir
    from pipelines.verify import verify_shards

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed: apt-get install espeak-ng")
    repo = Path(__file__).resolve().parents[1]
    job = repo / "jobs" / "demo.yaml"
    demo = yaml.safe_load(job.read_text())
    bucket = f"jobs-demo-{uuid.uuid4().hex[:12]}"  # moto's store is shared within the process
    s3 = pafs.S3FileSystem(**moto_s3_options, allow_bucket_creation=True)
    s3.create_dir(bucket)
    build = f"s3://{bucket}/demo"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    command = ["-m", "minmo.cli", "-q", "run", str(job), "--build", build]
    result = subprocess.run(
        [sys.executable, *command, "--storage-options", json.dumps(moto_s3_options)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ran = [line[3:] for line in result.stdout.splitlines() if line.startswith("== ")]
    assert ran == demo["steps"]
    assert list(cwd.iterdir()) == [], "a step wrote to a local relative path"

    keys = {i.path for i in s3.get_file_info(pafs.FileSelector(bucket, recursive=True))}
    assert [k for k in keys if not k.startswith(f"{bucket}/demo")] == []
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        assert f"verify {stage}/train: ok" in result.stdout  # the demo splits every stage
    verified = verify_shards(f"{build}/shards", moto_s3_options)
    assert sorted({k.split("/")[0] for k in verified}) == ["stage1", "stage2", "stage3", "stage4"]
    assert all(problems == [] for problems in verified.values()), verified

    for spec in demo["train"]["stages"]:
        stage_spec = yaml.safe_load(Path(spec.replace("{job_dir}", str(repo / "jobs"))).read_text())
        stage = str(stage_spec["stage"])
        ckpt = f"{build}/checkpoints/{stage}"
        root = ckpt.removeprefix("s3://")
        assert f"train {stage}:" in result.stdout
        assert f"exported to {ckpt}/final" in result.stdout
        with s3.open_input_stream(f"{root}/latest") as f:
            latest = f.read().decode().strip()
        assert latest == f"step-{stage_spec['steps']:08d}"
        assert {f"{root}/{latest}/.metadata", f"{root}/{latest}/rank0.pt"} <= keys
        with s3.open_input_stream(f"{root}/final/export.json") as f:
            assert json.loads(f.read())["stage"] == stage
        with s3.open_input_stream(f"{root}/metrics.jsonl") as f:
            steps = [json.loads(line)["step"] for line in f.read().splitlines()]
        assert steps == list(range(1, stage_spec["steps"] + 1))
        assert not staging_dir(ckpt).exists() and not staging_dir(f"{ckpt}/final").exists()
    assert "/lora/" in " ".join(k for k in keys if "/checkpoints/1c/final/" in k)

    assert f"{bucket}/demo/stats/stats.json" in keys
    assert f"{bucket}/demo/stats/report.html" in keys
    with s3.open_input_stream(f"{bucket}/demo/stats/stats.json") as f:
        assert json.loads(f.read())
    for stage, tasks in (("1b", {"asr", "language_id"}), ("4", {"duplex"})):  # eval step
        with s3.open_input_stream(f"{bucket}/demo/eval/{stage}/eval.json") as f:
            assert tasks <= set(json.loads(f.read())["tasks"])
