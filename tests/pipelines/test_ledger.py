"""The build directory's ledger: commit is atomic, a crashed unit is undone on the next run."""

import os

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.build import BuildDir, StepLedger
from schemas.shards import HOST_TAG, owner_tag, parse_owner, temp_name, temp_owner


def _stage(build: BuildDir, ledger: StepLedger, unit: str) -> None:
    staging = ledger.staging_dir(unit)
    build.fs.create_dir(f"{staging}/t", recursive=True)
    with build.fs.open_output_stream(f"{staging}/t/x.parquet") as out:
        pq.write_table(pa.table({"a": [1]}), out)


def test_commit_moves_files_then_marks_done(tmp_path):
    build = BuildDir(str(tmp_path))
    ledger = StepLedger(build, "step", ("t",))
    _stage(build, ledger, "u1")
    assert not ledger.is_done("u1")
    ledger.commit("u1", {"rows": 1})
    assert ledger.is_done("u1")
    assert [p.name for p in (tmp_path / "t").iterdir()] == ["step~u1_0000.parquet"]
    assert not (tmp_path / "_state" / "step" / "staging" / ledger.run_id / "u1").exists()
    assert next(ledger.done_units())["rows"] == 1


def test_recover_removes_uncommitted_output(tmp_path, dead_pid):
    build = BuildDir(str(tmp_path))
    crashed = StepLedger(build, "step", ("t",), run_id=f"{owner_tag(dead_pid)}-0badf00d")
    _stage(build, crashed, "u1")
    crashed.commit("u1", {})
    # a crash after moving u2's file but before its marker, and one with u3 still staged:
    _stage(build, crashed, "u2")
    build.fs.move(
        f"{crashed.staging_dir('u2')}/t/x.parquet", f"{build.table_dir('t')}/step~u2_0000.parquet"
    )
    _stage(build, crashed, "u3")
    rerun = StepLedger(build, "step", ("t",))
    assert rerun.recover() == 2  # u2's part, and the dead run's staging folder
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["step~u1_0000.parquet"]
    assert list((tmp_path / "_state" / "step" / "staging").iterdir()) == []
    rerun.finish()
    assert not (tmp_path / "_state" / "step" / "staging").exists()


def test_recover_keeps_a_live_runs_staging_and_sweeps_dead_writers_temp_files(tmp_path, dead_pid):
    build = BuildDir(str(tmp_path))
    live = StepLedger(build, "step", ("t",))  # this process: a run still going
    _stage(build, live, "u1")
    foreign = StepLedger(build, "step", ("t",), run_id=f"{owner_tag(dead_pid, '0' * 8)}-1")
    _stage(build, foreign, "u2")  # another host's run, written just now: may be alive
    state = tmp_path / "_state" / "step"
    (state / "done").mkdir(parents=True)
    (state / "done" / temp_name("u9.json", pid=dead_pid)).write_text("{")  # killed marker write
    (state / "done" / temp_name("u8.json")).write_text("{")  # a live writer's
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / temp_name("step~u9_0000.parquet", pid=dead_pid)).write_text("x")
    rerun = StepLedger(build, "step", ("t",))
    assert rerun.recover() == 2
    assert sorted(p.name for p in (state / "staging").iterdir()) == sorted(
        [live.run_id, foreign.run_id]
    )
    [kept] = list((state / "done").iterdir())
    assert temp_owner(kept.name) == (os.getpid(), HOST_TAG)
    assert list((tmp_path / "t").iterdir()) == []
    live.finish()  # a finished run leaves no folder of its own, and keeps the other run's
    assert [p.name for p in (state / "staging").iterdir()] == [foreign.run_id]


def test_a_run_id_names_its_driver(tmp_path):
    ledger = StepLedger(BuildDir(str(tmp_path)), "step", ())
    assert parse_owner(ledger.run_id) == (os.getpid(), HOST_TAG)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    build = BuildDir(str(tmp_path))
    build.write_json_atomic(build.path("a", "b.json"), {"x": 1})
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]
    assert build.read_json(build.path("a", "b.json")) == {"x": 1}


def test_steps_sharing_a_table_recover_only_their_own_files(tmp_path):
    """quarantine gets rows from every step: one step's recovery must not touch another's."""
    build = BuildDir(str(tmp_path))
    ingest = StepLedger(build, "ingest", ("t",))
    _stage(build, ingest, "a1")
    ingest.commit("a1", {})
    diarize = StepLedger(build, "diarize", ("t",))
    _stage(build, diarize, "b1")
    diarize.commit("b1", {})
    names = sorted(p.name for p in (tmp_path / "t").iterdir())
    assert names == ["a1_0000.parquet", "diarize~b1_0000.parquet"]  # ingest keeps its old names
    assert StepLedger(build, "ingest", ("t",)).recover() == 0
    assert StepLedger(build, "diarize", ("t",)).recover() == 0
    build.delete(f"{diarize.done_dir}/b1.json")  # diarize's unit lost its marker
    assert StepLedger(build, "ingest", ("t",)).recover() == 0
    assert StepLedger(build, "diarize", ("t",)).recover() == 1
    assert [p.name for p in (tmp_path / "t").iterdir()] == ["a1_0000.parquet"]
