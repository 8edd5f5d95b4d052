"""The command line as a user meets it: help, clear errors, flags from the config classes."""

import pytest

from minmo.cli import build_parser, main, section_from_args
from minmo.cli.jobs import load_job, split_section
from minmo.cli.steps import STEPS
from minmo.config import ConfigError
from minmo.train.config import load_train_config


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
    ("chat", ["chat", "s3://b/final", "q.wav"]),
    ("chat", ["chat", "final", "gs://b/q.wav"]),
    ("chat", ["chat", "final", "q.wav", "--out", "s3://b/out"]),
    ("chat", ["chat", "final", "q.wav", "--cosyvoice2", "s3://b/cv2"]),
    ("duplex-sim", ["duplex-sim", "s3://b/final", "call.wav"]),
    ("duplex-sim", ["duplex-sim", "final", "s3://b/call.wav"]),
    ("duplex-sim", ["duplex-sim", "final", "call.wav", "--out", "s3://b/d.jsonl"]),
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
        "shards", "verify", "stats", "train", "run", "plan", "doctor", "eval", "chat",
        "duplex-sim",
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


# The demo job end to end (`make demo`): tests/test_jobs.py runs it once, on S3, for all the
# tests that read its build.


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
