import pytest

from minmo.jobs import JobSpecError, load_job


def test_demo_job_parses(tmp_path):
    plan = load_job("jobs/demo.yaml", str(tmp_path))
    assert [step.name for step, _ in plan] == [
        "demo-data",
        "ingest",
        "synthesize",
        "diarize",
        "label-turns",
        "shards",
        "verify",
        "train",
        "stats",
    ]
    ingest = plan[1][1]
    assert ingest["src"].startswith(str(tmp_path))


def test_unknown_key_names_the_nearest_valid_one(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("steps: [ingest]\ningest:\n  src: x\n  max_segmnt_s: 20\n")
    with pytest.raises(JobSpecError, match='did you mean "max_segment_s"'):
        load_job(spec, str(tmp_path))


def test_unknown_step_and_top_level_key(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("steps: [ingst]\n")
    with pytest.raises(JobSpecError, match='did you mean "ingest"'):
        load_job(spec, str(tmp_path))
    spec.write_text("steps: [ingest]\nstepz: 1\n")
    with pytest.raises(JobSpecError, match='did you mean "steps"'):
        load_job(spec, str(tmp_path))


def test_step_sections_are_checked_against_their_configs(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("steps: [diarize, label-turns]\ndiarize:\n  backnd: offline\n")
    with pytest.raises(JobSpecError, match='did you mean "backend"'):
        load_job(spec, str(tmp_path))
    spec.write_text("steps: [label-turns]\nlabel-turns:\n  hop: 0.12\n")
    with pytest.raises(JobSpecError, match='did you mean "hop_s"'):
        load_job(spec, str(tmp_path))
