"""The command line as a user meets it: help, clear errors, and the demo job end to end."""

import subprocess
import sys
from pathlib import Path

import pytest

from minmo.cli import build_parser, main, section_from_args
from minmo.cli.jobs import load_job, split_section
from minmo.cli.steps import STEPS
from minmo.config import ConfigError
from minmo.train.config import load_train_config

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in (
        "demo-data",
        "ingest",
        "synthesize",
        "diarize",
        "annotate",
        "label-turns",
        "shards",
        "verify",
        "train",
        "model-info",
        "stats",
        "run",
    ):
        assert command in out


def test_unknown_job_key_is_a_clear_error(tmp_path, capsys):
    spec = tmp_path / "job.yaml"
    spec.write_text("steps: [ingest]\ningest:\n  src: x\n  fles_per_unit: 3\n")
    assert main(["run", str(spec), "--build", str(tmp_path / "b")]) == 2
    assert 'did you mean "files_per_unit"' in capsys.readouterr().err


BAD = "ftp://x/y"
# (command, argv): one case per path argument that takes a URI, plus the local-only ones.
UNSERVED = [
    ("demo-data", ["demo-data", BAD]),
    ("ingest", ["ingest", BAD, "--build", "b"]),
    ("ingest", ["ingest", "src", "--build", "foo://x/y"]),
    ("synthesize", ["synthesize", "--build", BAD, "--dialogues", "d.jsonl"]),
    ("synthesize", ["synthesize", "--build", "b", "--dialogues", BAD]),
    ("synthesize", ["synthesize", "--build", "b", "--dialogues", "d", "--responses", BAD]),
    ("diarize", ["diarize", "--build", BAD]),
    ("diarize", ["diarize", "--build", "b", "--diarization-model", "s3://m/pyannote"]),
    ("annotate", ["annotate", "--build", BAD, "--model", "m"]),
    ("annotate", ["annotate", "--build", "b", "--model", "s3://m/sensevoice"]),
    ("label-turns", ["label-turns", "--build", BAD]),
    ("shards", ["shards", "--build", BAD]),
    ("shards", ["shards", "--build", "b", "--speech-tokenizer", "s3://m/s3.pt"]),
    ("shards", ["shards", "--build", "b", "--text-tokenizer", "gs://m/qwen"]),
    ("verify", ["verify", BAD]),
    ("stats", ["stats", BAD]),
    ("stats", ["stats", "a", "--out", BAD]),
    ("train", ["train", BAD, "--build", "b"]),
    ("train", ["train", "job.yaml", "--build", BAD]),
    ("train", ["train", "job.yaml", "--build", "b", "--out", BAD]),
    ("train", ["train", "job.yaml", "--build", "b", "--staging", "s3://b/tmp"]),
    ("run", ["run", BAD, "--build", "b"]),
    ("run", ["run", "job.yaml", "--build", BAD]),
    ("doctor", ["doctor", "--build", BAD]),
    ("plan", ["plan", "--mix", BAD]),
    ("plan", ["plan", "--rates", BAD]),
    ("eval", ["eval", BAD, "--shards", "s"]),
    ("eval", ["eval", "final", "--shards", BAD]),
    ("eval", ["eval", "final", "--shards", "s", "--out", BAD]),
]


@pytest.mark.parametrize(("command", "argv"), UNSERVED, ids=[" ".join(a) for _, a in UNSERVED])
def test_a_scheme_a_command_cannot_serve_is_an_error(command, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = next(a for a in argv if "://" in a)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"minmo {command}" in err and uri.split("://")[0] + "://" in err, err
    assert list(tmp_path.iterdir()) == []  # no ./x, ./ftp:, ./s3: left behind


def test_every_command_taking_a_path_checks_it():
    from minmo.cli import PATH_ARGS

    assert {c for c, _ in UNSERVED} == set(PATH_ARGS) == {
        "demo-data", "ingest", "synthesize", "diarize", "annotate", "label-turns",
        "shards", "verify", "stats", "train", "run", "plan", "doctor", "eval",
    }  # fmt: skip
    # every entry names a real argument (a typo would silently go unchecked)
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command, dests in PATH_ARGS.items():
        known = {a.dest for a in sub.choices[command]._actions}
        assert set(dests) <= known, (command, set(dests) - known)


def test_a_collapsed_uri_is_not_a_local_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["verify", "s3:/bucket/shards"]) == 2
    assert "s3://bucket/shards" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the whole demo job (up to 600 s), then the report in a browser
def test_demo_job_end_to_end(tmp_path):
    build = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "minmo.cli", "-q", "run", "jobs/demo.yaml", "--build", str(build)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "audio-h per wall-h" in result.stdout
    from pipelines.build import BuildDir
    from pipelines.ingest.run import read_table

    b = BuildDir(str(build))
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
        assert line in result.stdout
    # shards + verify: four stages written from everything above, each split verified.
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        for split in ("train", "valid", "test"):
            if (build / "shards" / stage / split).is_dir():
                assert f"verify {stage}/{split}: ok" in result.stdout
                assert (build / "shards" / stage / split / "_index" / "index.json").is_file()
        assert f"verify {stage}/train: ok" in result.stdout
    assert "RANDOM-INIT S3TokenizerV2" in result.stdout
    # train: a tiny MinMo through all seven stages, each exporting its modules.
    for stage in ("1a", "1b", "1c", "2a", "2b", "3", "4"):
        assert f"train {stage}:" in result.stdout
        assert (build / "checkpoints" / stage / "final" / "export.json").is_file()
    # stats: the analysts' report of everything above, which must render in a real browser.
    report = build / "stats" / "report.html"
    assert f"report: {report}" in result.stdout
    _check_report_renders(report, build)


def _check_report_renders(report: Path, build: Path) -> None:
    import json
    import shutil

    from tests.stats.chromium import render_report, require_chromium

    stats = json.loads((build / "stats" / "stats.json").read_text())
    assert stats["recordings"]["count"] >= 46 and stats["samples"]["count"] > 100
    assert set(stats["shards"]) == {"stage1", "stage2", "stage3", "stage4"}
    assert stats["quarantine"]["count"] == 4 and not stats["errors"]
    # eval: the 1b and 4 exports scored on their test splits (a tiny model's poor figures)
    for stage, tasks in (("1b", {"asr", "language_id"}), ("4", {"duplex"})):
        assert tasks <= set(json.loads((build / "eval" / stage / "eval.json").read_text())["tasks"])
    assert [e["stage"] for e in stats["eval"]] == ["1b", "4"]
    require_chromium()
    shot = build / "stats" / "report.png"
    rendered = render_report(report, shot)
    assert rendered.problems() == [], rendered.problems()
    assert rendered.external_requests == []
    assert len(rendered.figures) >= 30
    # keep the screenshot where a developer (or CI's artifacts) can look at it
    keep = REPO / "build" / "test-artifacts" / "demo-report.png"
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, keep)


# ------------------------------------------------- flags generated from the config dataclasses


def _fields(cls, prefix=""):
    """Every dest a config class should give the command line (nested sections as a.b)."""
    import dataclasses

    from minmo.config import field_types, nested_dataclass, section_schema

    types = field_types(cls)
    for f in dataclasses.fields(cls):
        inner = nested_dataclass(types[f.name]) or section_schema(f)
        if inner is not None:
            yield from _fields(inner, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


def _dests(name):
    from minmo.cli import build_parser

    sub = next(a for a in build_parser(only=name)._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices[name]._actions}


@pytest.mark.parametrize("name", list(STEPS))
def test_every_config_field_is_a_documented_flag(name):
    spec = STEPS[name]
    dests = _dests(name)
    for cls in (spec.inputs, spec.config_class()):
        for dest in _fields(cls):
            assert dest in dests, f"minmo {name}: no flag for {dest}"
    # documented once, in the field's docstring: the step's own flags all say something
    from minmo.config import field_docs

    docs = field_docs(spec.config_class())
    for name_, doc in docs.items():
        if name_ in dests:  # a nested section has a flag per key instead
            assert doc in " ".join(dests[name_].help.replace("%%", "%").split()), name_


def test_historic_flags_keep_working():
    parse = build_parser(only="shards").parse_args
    args = parse(
        ["shards", "--build", "b", "--stage", "2", "--max-mb", "5", "--samples.hotwords", "3"]
    )
    section = section_from_args(args)
    assert section == {"stages": ["stage2"], "max_bytes": 5_000_000, "samples": {"hotwords": 3}}
    args = build_parser(only="diarize").parse_args(
        ["diarize", "--build", "b", "--task", "conversation", "--task", "meeting"]
    )
    assert section_from_args(args) == {"tasks": ["conversation", "meeting"]}
    args = build_parser(only="synthesize").parse_args(
        ["synthesize", "--build", "b", "--dialogues", "a.jsonl", "--no-duplex"]
    )
    assert section_from_args(args) == {"dialogues": ["a.jsonl"], "duplex": False}


def test_cli_over_yaml_over_defaults(tmp_path):
    from pipelines.ingest.config import IngestConfig

    yaml_file = tmp_path / "ingest.yaml"
    yaml_file.write_text(
        "steps: [ingest]\ningest: {src: ['{job_dir}/a'], max_segment_s: 20, files_per_unit: 8}\n"
    )
    argv = ["ingest", "--build", "b", "--config", str(yaml_file), "--max-segment-s", "25"]
    args = build_parser(only="ingest").parse_args(argv)
    inputs, config = split_section("ingest", STEPS["ingest"], section_from_args(args))
    assert inputs.src == [f"{tmp_path}/a"]  # expanded as in a job
    assert config.max_segment_s == 25  # the command line
    assert config.files_per_unit == 8  # the YAML
    assert config.min_duration_s == IngestConfig().min_duration_s  # the default


def test_unknown_nested_key_names_the_nearest(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("steps: [shards]\nshards:\n  samples: {hotwrds: 3}\n")
    with pytest.raises(ConfigError, match='shards.samples: unknown key "hotwrds".*"hotwords"'):
        load_job(spec, str(tmp_path))
    spec.write_text("steps: [synthesize]\nsynthesize:\n  duplex_options: {overlap_rat: 0.2}\n")
    with pytest.raises(ConfigError, match='did you mean "overlap_rate"'):
        load_job(spec, str(tmp_path))
    spec.write_text("steps: [shards]\nshards:\n  mixture: {stage5: {asr: 1}}\n")
    with pytest.raises(ConfigError, match='unknown key "stage5"'):
        load_job(spec, str(tmp_path))
    train = tmp_path / "1a.yaml"
    train.write_text("stage: 1a\nmodel: {sise: tiny}\n")
    with pytest.raises(ConfigError, match='model: unknown key "sise" \\(did you mean "size"'):
        load_train_config(train, str(tmp_path))


def test_verbose_brings_rays_logs_back(tmp_path, monkeypatch, capsys):
    import logging

    from pipelines.ray_runtime import VERBOSE_ENV, _ray_data_console, ray_verbose

    monkeypatch.setenv(VERBOSE_ENV, "0")
    missing = str(tmp_path / "nope.yaml")
    assert main(["--verbose", "plan", "--mix", missing]) == 2
    assert ray_verbose()
    assert main(["plan", "--mix", missing]) == 2
    assert not ray_verbose()
    assert main(["run", missing, "--build", str(tmp_path), "--verbose"]) == 2
    assert ray_verbose()

    def console_level() -> int:
        [console] = [
            h for h in logging.getLogger("ray.data").handlers if "File" not in type(h).__name__
        ]
        return console.level

    monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG", raising=False)
    _ray_data_console(logging.ERROR)  # the default: Ray Data's INFO lines stay in its log file
    assert console_level() == logging.ERROR
    _ray_data_console(logging.INFO)  # --verbose
    assert console_level() == logging.INFO


def test_a_section_whole_as_json_under_its_keys():
    args = build_parser(only="shards").parse_args(
        [
            "shards",
            "--build",
            "b",
            "--mixture.stage1",
            '{"asr": 2.0}',
            "--mixture",
            '{"stage1": {"asr": 0.5}, "stage2": {"tts": 1.0}}',
        ]
    )
    section = section_from_args(args)
    assert section == {"mixture": {"stage1": {"asr": 2.0}, "stage2": {"tts": 1.0}}}


def test_the_mixture_section_names_every_stage():
    import dataclasses

    from pipelines.samples.builders import STAGES
    from pipelines.shards.step import Mixture

    assert [f.name for f in dataclasses.fields(Mixture)] == list(STAGES)
