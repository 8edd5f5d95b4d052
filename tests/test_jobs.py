import json
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from minmo.cli.jobs import load_job
from minmo.cli.steps import STEPS, StepSpec
from minmo.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


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


# ------------------------------------------------------ the whole demo job, once, on S3
#
# The demo job is the slowest thing the suite runs, so it runs once per session, with
# `--build s3://…` against a local moto server, and several tests read what it left: the job's
# steps and their tables, its shards, its seven training stages, its report.

# Steps whose losses are averaged at each end of a stage's metrics.jsonl: a tiny model's
# per-step loss is one small batch's, so a single first or last step is mostly batch noise.
LOSS_WINDOW_STEPS = 3


@dataclass
class DemoOnS3:
    """What the whole demo job left on the store, and how to read it."""

    result: subprocess.CompletedProcess[str]
    build: str  # s3://<bucket>/demo
    bucket: str
    options: dict[str, Any]
    s3: Any  # pyarrow.fs.S3FileSystem
    keys: set[str]  # every object in the bucket after the run
    root: Path  # a local temp dir: the job's cwd, downloads, a local copy of demo-data
    demo: dict[str, Any]  # jobs/demo.yaml

    def read(self, key: str) -> bytes:
        """The bytes of an object under the bucket (`key` relative to the bucket)."""
        with self.s3.open_input_stream(f"{self.bucket}/{key}") as f:
            return f.read()


@pytest.fixture(scope="module")
def demo_on_s3(tmp_path_factory: pytest.TempPathFactory, moto_s3_module_options) -> DemoOnS3:
    """The whole demo job (jobs/demo.yaml, every step) with `--build s3://…`, run once."""
    import pyarrow.fs as pafs

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed: apt-get install espeak-ng")
    root = tmp_path_factory.mktemp("demo-s3")
    job = REPO / "jobs" / "demo.yaml"
    demo = yaml.safe_load(job.read_text())
    bucket = f"jobs-demo-{uuid.uuid4().hex[:12]}"  # moto's store is shared within the process
    s3 = pafs.S3FileSystem(**moto_s3_module_options, allow_bucket_creation=True)
    s3.create_dir(bucket)
    build = f"s3://{bucket}/demo"
    cwd = root / "cwd"
    cwd.mkdir()
    command = ["-m", "minmo.cli", "-q", "run", str(job), "--build", build]
    result = subprocess.run(
        [sys.executable, *command, "--storage-options", json.dumps(moto_s3_module_options)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(cwd.iterdir()) == [], "a step wrote to a local relative path"
    keys = {i.path for i in s3.get_file_info(pafs.FileSelector(bucket, recursive=True))}
    return DemoOnS3(result, build, bucket, moto_s3_module_options, s3, keys, root, demo)


def _stage_specs(demo: dict[str, Any]) -> list[dict[str, Any]]:
    """The demo's training stage specs (jobs/train/*.yaml), in the job's order."""
    return [
        yaml.safe_load(Path(spec.replace("{job_dir}", str(REPO / "jobs"))).read_text())
        for spec in demo["train"]["stages"]
    ]


DEMO_TIMEOUT = pytest.mark.timeout(2400)  # the whole demo job on a local S3 server (<= 1800 s)


@pytest.mark.slow
@DEMO_TIMEOUT
def test_demo_job_on_s3_runs_every_step_on_the_store(demo_on_s3: DemoOnS3) -> None:
    """Every step succeeds with `--build s3://…`, the shards verify on the store, the seven
    training stages keep their checkpoints, metrics and exports in the bucket (each stage's
    init_from read from there), the stats land there, and nothing is written to a local
    relative path (checked by the fixture) or left in the trainer's staging."""
    from minmo.train.store import staging_dir
    from pipelines.verify import verify_shards

    run, bucket, keys = demo_on_s3, demo_on_s3.bucket, demo_on_s3.keys
    ran = [line[3:] for line in run.result.stdout.splitlines() if line.startswith("== ")]
    assert ran == run.demo["steps"]
    assert [k for k in keys if not k.startswith(f"{bucket}/demo")] == []
    assert not [k for k in keys if ".tmp" in k], "temporary files left behind"
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        assert f"verify {stage}/train: ok" in run.result.stdout  # the demo splits every stage
    verified = verify_shards(f"{run.build}/shards", run.options)
    assert sorted({k.split("/")[0] for k in verified}) == ["stage1", "stage2", "stage3", "stage4"]
    assert all(problems == [] for problems in verified.values()), verified

    for stage_spec in _stage_specs(run.demo):
        stage = str(stage_spec["stage"])
        ckpt = f"{run.build}/checkpoints/{stage}"
        root = ckpt.removeprefix(f"s3://{bucket}/")
        assert f"train {stage}:" in run.result.stdout
        assert f"exported to {ckpt}/final" in run.result.stdout
        latest = run.read(f"{root}/latest").decode().strip()
        assert latest == f"step-{stage_spec['steps']:08d}"
        assert {f"{bucket}/{root}/{latest}/.metadata", f"{bucket}/{root}/{latest}/rank0.pt"} <= keys
        assert json.loads(run.read(f"{root}/final/export.json"))["stage"] == stage
        steps = [
            json.loads(line)["step"] for line in run.read(f"{root}/metrics.jsonl").splitlines()
        ]
        assert steps == list(range(1, stage_spec["steps"] + 1))
        assert not staging_dir(ckpt).exists() and not staging_dir(f"{ckpt}/final").exists()
    assert "/lora/" in " ".join(k for k in keys if "/checkpoints/1c/final/" in k)

    assert f"{bucket}/demo/stats/stats.json" in keys
    assert f"{bucket}/demo/stats/report.html" in keys
    assert json.loads(run.read("demo/stats/stats.json"))
    for stage, tasks in (("1b", {"asr", "language_id"}), ("4", {"duplex"})):  # the eval step
        assert tasks <= set(json.loads(run.read(f"demo/eval/{stage}/eval.json"))["tasks"])


@pytest.mark.slow
@DEMO_TIMEOUT
def test_every_demo_stage_trains(demo_on_s3: DemoOnS3) -> None:
    """Each of the seven stages' loss goes down: the mean of its first LOSS_WINDOW_STEPS logged
    losses (metrics.jsonl) is above the mean of its last LOSS_WINDOW_STEPS."""
    trends = {}
    for stage_spec in _stage_specs(demo_on_s3.demo):
        stage = str(stage_spec["stage"])
        lines = demo_on_s3.read(f"demo/checkpoints/{stage}/metrics.jsonl").splitlines()
        losses = [json.loads(line)["loss"] for line in lines]
        assert len(losses) >= 2 * LOSS_WINDOW_STEPS, (stage, losses)
        first = sum(losses[:LOSS_WINDOW_STEPS]) / LOSS_WINDOW_STEPS
        last = sum(losses[-LOSS_WINDOW_STEPS:]) / LOSS_WINDOW_STEPS
        trends[stage] = (round(first, 4), round(last, 4))
    assert all(last < first for first, last in trends.values()), trends


@pytest.mark.slow
@DEMO_TIMEOUT
def test_demo_job_tables_on_s3(demo_on_s3: DemoOnS3) -> None:
    """The demo's table steps on the store: every table lands there, every audio URI points into
    it, no read fails (quarantine holds only the bundled broken dialogues), and demo-data on the
    store is byte for byte the local corpus."""
    from minmo.demo import build_demo_corpus
    from pipelines.build import BuildDir, is_build_key
    from pipelines.ingest.run import read_table

    run, bucket, build, keys = demo_on_s3, demo_on_s3.bucket, demo_on_s3.build, demo_on_s3.keys
    for step in ("ingest", "synthesize", "diarize", "label-turns"):
        assert f"{bucket}/demo/_state/{step}/summary.json" in keys

    local_src = run.root / "local-src"
    local = build_demo_corpus(local_src, seed=0, progress=False)
    for path in sorted(local_src.rglob("*")):
        if path.is_file():
            rel = path.relative_to(local_src)
            assert run.read(f"demo/demo-src/{rel}") == path.read_bytes(), rel

    b = BuildDir(build, **run.options)
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
@DEMO_TIMEOUT
def test_demo_job_builds_what_the_readme_shows(demo_on_s3: DemoOnS3) -> None:
    """What `make demo` promises, read from the demo build: the corpus, the refusals, the
    synthesised and diarized conversations, verified shards of all four stages, seven exported
    training stages, and the analysts' report rendering in a real browser."""
    from pipelines.build import BuildDir
    from pipelines.ingest.run import read_table

    run, stdout, bucket = demo_on_s3, demo_on_s3.result.stdout, demo_on_s3.bucket
    assert "audio-h per wall-h" in stdout
    b = BuildDir(run.build, **run.options)
    recordings = read_table(b, "recordings")
    assert recordings.num_rows >= 46
    stereo = [r for r in recordings.to_pylist() if r["channels"] == 2]
    assert len(stereo) >= 3
    assert read_table(b, "segments").num_rows > recordings.num_rows
    # the only refusals: the four broken rows of demo_dialogues_unusable.jsonl
    refused = read_table(b, "quarantine").to_pylist()
    assert sorted((q["step"], q["reason_code"], q["item_key"]) for q in refused) == [
        ("synthesize", "bad_dialogue", f"line {n}") for n in (1, 2, 3, 4)
    ]
    assert all(q["source_uri"].endswith("demo_dialogues_unusable.jsonl") for q in refused)
    # synthesize: 8 bundled dialogues -> stage-3 samples and 8 simulated duplex calls, which
    # diarize + label-turns take with the 7 demo conversations (one far-field; two labelled
    # samples each) and the 2 demo meetings (4 and 3 voices found: one sample per speaker).
    assert read_table(b, "s2s_samples").num_rows > 8
    turns = read_table(b, "turns")
    assert len(set(turns.column("recording_id").to_pylist())) == 7 + 8 + 2
    assert read_table(b, "frame_labels").num_rows == 2 * (7 + 8) + 4 + 3
    assert read_table(b, "events").num_rows > 12
    for line in ("synthesize:", "diarize:", "label-turns:", "events: assistant_turn_taking"):
        assert line in stdout
    # shards + verify: four stages written from everything above, each split verified.
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        for split in ("train", "valid", "test"):
            prefix = f"{bucket}/demo/shards/{stage}/{split}/"
            if any(k.startswith(prefix) for k in run.keys):
                assert f"verify {stage}/{split}: ok" in stdout
                assert f"{prefix}_index/index.json" in run.keys
        assert f"verify {stage}/train: ok" in stdout
    assert "RANDOM-INIT S3TokenizerV2" in stdout
    # train: a tiny MinMo through all seven stages, each exporting its modules.
    for stage in ("1a", "1b", "1c", "2a", "2b", "3", "4"):
        assert f"train {stage}:" in stdout
        assert f"{bucket}/demo/checkpoints/{stage}/final/export.json" in run.keys
    # stats: the analysts' report of everything above, which must render in a real browser.
    assert f"report: {run.build}/stats/report.html" in stdout
    report = run.root / "stats" / "report.html"  # self-contained: rendered from a local copy
    report.parent.mkdir()
    report.write_bytes(run.read("demo/stats/report.html"))
    stats = json.loads(run.read("demo/stats/stats.json"))
    _check_report_renders(report, stats)


def _check_report_renders(report: Path, stats: dict[str, Any]) -> None:
    from tests.stats.chromium import render_report, require_chromium

    assert stats["recordings"]["count"] >= 46 and stats["samples"]["count"] > 100
    assert set(stats["shards"]) == {"stage1", "stage2", "stage3", "stage4"}
    assert stats["quarantine"]["count"] == 4 and not stats["errors"]
    assert [e["stage"] for e in stats["eval"]] == ["1b", "4"]  # the eval step's figures
    require_chromium()
    shot = report.parent / "report.png"
    rendered = render_report(report, shot)
    assert rendered.problems() == [], rendered.problems()
    assert rendered.external_requests == []
    assert len(rendered.figures) >= 30
    # keep the screenshot where a developer (or CI's artifacts) can look at it
    keep = REPO / "build" / "test-artifacts" / "demo-report.png"
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, keep)
