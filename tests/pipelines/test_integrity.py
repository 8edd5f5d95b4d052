"""The build's integrity check and `minmo doctor --fix`, on builds committed through the real
StepLedger (no Ray): damaged parts and shards are found from listings and markers, a step stops
naming them, and the repair moves whole units aside without deleting anything."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pytest

from minmo.cli import main
from minmo.io.parquet import write_table
from pipelines.build import PARTS_KEY, BuildDir, StepLedger
from pipelines.integrity import DamagedBuild, check_before_step, inspect, repair
from pipelines.lock import lock_path
from pipelines.shards import records
from tests.pipelines.lock_holder import hold_lock

# A step whose units need nothing else forgotten on repair (ingest's also rebuild its commit
# index from real recordings tables: tests/pipelines/test_build_safety.py).
STEP = "diarize"
TABLES = ("turns", "quarantine")


def _part(table: str, unit: str) -> str:
    return f"{table}/{STEP}~{unit}_0000.parquet"


def _commit(build: BuildDir, unit: str, rows: int = 50, step: str = STEP) -> None:
    """Stage one part per table for `unit` and commit it, as a step does."""
    ledger = StepLedger(build, step, TABLES)
    for table in TABLES:
        part = pa.table({"id": [f"{unit}-{i}" for i in range(rows)], "x": list(range(rows))})
        write_table(build.fs, f"{ledger.staging_dir(unit)}/{table}/part.parquet", part)
    ledger.commit(unit, {"rows": rows})


def _files(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture()
def build(tmp_path: Path) -> BuildDir:
    b = BuildDir(str(tmp_path / "build"))
    _commit(b, "aaaa")
    _commit(b, "bbbb")
    return b


def test_a_clean_build_has_no_finding(build: BuildDir) -> None:
    assert inspect(build).findings == []
    check_before_step(build)  # no raise
    marker = build.read_json(f"{build.path('_state', STEP, 'done')}/aaaa.json")
    assert set(marker[PARTS_KEY]) == set(TABLES)
    assert marker[PARTS_KEY]["turns"][_part("turns", "aaaa").split("/")[1]] > 0


def test_a_truncated_part_stops_a_step_naming_the_file_and_the_repair(build: BuildDir) -> None:
    part = Path(build.path(_part("turns", "aaaa")))
    size = part.stat().st_size
    os.truncate(part, size // 2)
    [finding] = inspect(build).damage
    assert finding.path == _part("turns", "aaaa")
    assert (finding.step, finding.unit) == (STEP, "aaaa")
    assert f"{size // 2} bytes, committed with {size}" in finding.what
    with pytest.raises(DamagedBuild) as raised:
        check_before_step(build)
    message = str(raised.value)
    assert _part("turns", "aaaa") in message
    assert f"minmo doctor --build {build.uri} --fix" in message


def test_a_marker_whose_part_is_missing_is_damage(build: BuildDir) -> None:
    os.remove(build.path(_part("quarantine", "bbbb")))
    [finding] = inspect(build).damage
    assert finding.path == _part("quarantine", "bbbb")
    assert finding.what.startswith("missing")


def test_a_marker_from_before_sizes_were_recorded_gets_the_footer_read(build: BuildDir) -> None:
    marker_path = f"{build.path('_state', STEP, 'done')}/aaaa.json"
    marker = build.read_json(marker_path)
    del marker[PARTS_KEY]
    build.write_json_atomic(marker_path, marker)
    assert inspect(build).findings == []  # whole parts pass the footer check
    part = build.path(_part("turns", "aaaa"))
    os.truncate(part, os.path.getsize(part) - 100)
    [finding] = inspect(build).damage
    assert finding.path == _part("turns", "aaaa") and "footer" in finding.what


def test_an_unreadable_marker_is_damage(build: BuildDir) -> None:
    Path(build.path("_state", STEP, "done", "aaaa.json")).write_text('{"unit": "aa')
    [finding] = inspect(build).damage
    assert finding.path == f"_state/{STEP}/done/aaaa.json" and "unreadable" in finding.what


def test_an_uncommitted_part_is_listed_but_does_not_stop_a_step(build: BuildDir) -> None:
    write_table(build.fs, build.path(_part("turns", "cccc")), pa.table({"x": [1]}))
    [finding] = inspect(build).findings
    assert not finding.damage and finding.unit == "cccc"
    check_before_step(build)  # the owning step's recover deletes it; no reason to stop


def test_repair_moves_the_whole_unit_aside_and_clears_its_marker(build: BuildDir) -> None:
    root = Path(build.root)
    os.truncate(root / _part("turns", "aaaa"), 100)
    before = _files(root)
    result = repair(build, inspect(build))
    after = _files(root)
    aside = Path(result.aside)
    # Nothing deleted: every file is still there, at its place or under the doctor's folder.
    for rel, size in before.items():
        assert after.get(rel, after.get(str(aside / rel))) == size, rel
    moved = {m["from"] for m in result.moved}
    assert moved == {
        f"_state/{STEP}/done/aaaa.json",
        _part("turns", "aaaa"),
        _part("quarantine", "aaaa"),
    }
    assert not StepLedger(build, STEP, TABLES).is_done("aaaa")
    assert StepLedger(build, STEP, TABLES).is_done("bbbb")
    report = json.loads((root / aside / "report.json").read_text())
    assert report["findings"][0]["path"] == _part("turns", "aaaa")
    assert inspect(build).findings == []


def test_a_step_a_live_run_holds_is_not_checked(build: BuildDir) -> None:
    os.truncate(build.path(_part("turns", "aaaa")), 10)
    holder = _hold_lock(build, STEP)
    try:
        report = inspect(build)
        assert report.findings == []
        assert report.skipped[STEP]["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert inspect(build).damage  # the holder is gone: checked again


def test_the_cli_stops_a_step_on_a_damaged_build_before_it_runs(
    build: BuildDir, capsys: pytest.CaptureFixture[str]
) -> None:
    os.truncate(build.path(_part("turns", "bbbb")), 10)
    started = time.perf_counter()
    assert main(["-q", "label-turns", "--build", build.uri]) == 3
    assert time.perf_counter() - started < 10  # stopped before Ray or any model starts
    err = capsys.readouterr().err
    assert _part("turns", "bbbb") in err and "minmo doctor --build" in err
    assert "Traceback" not in err
    assert main(["doctor", "--build", build.uri]) == 1
    assert f"damaged: {_part('turns', 'bbbb')}" in capsys.readouterr().out
    assert main(["doctor", "--build", build.uri, "--fix"]) == 0
    out = capsys.readouterr().out
    assert f"cleared {STEP} unit bbbb" in out and "no inconsistency found" in out


def _hold_lock(build: BuildDir, step: str) -> subprocess.Popen:
    """A process holding `step`'s lock until killed."""
    proc = hold_lock(build.uri, step)
    assert os.path.exists(lock_path(build, step))
    return proc


# ---- shards ------------------------------------------------------------------------------


def _shard_build(tmp_path: Path) -> tuple[BuildDir, Path]:
    """A build with one committed shard of stage1, generation 0, as the shards step leaves it:
    tar, .idx, done marker, index.json and a complete generation record."""
    build = BuildDir(str(tmp_path / "sb"))
    stage_dir = Path(build.path("shards", "stage1"))
    (stage_dir / "_index").mkdir(parents=True)
    name = "stage1-g0000-000000.tar"
    (stage_dir / name).write_bytes(b"t" * 4096)
    (stage_dir / "_index" / f"{name}.idx").write_bytes(b"\0" * 16)
    entry = {"name": name, "generation": 0, "bytes": 4096, "sha256": "x", "samples": 1}
    (stage_dir / "_index" / "index.json").write_text(json.dumps({"version": 2, "shards": [entry]}))
    unit = records.shard_unit("stage1", 0, 0)
    ledger = StepLedger(build, records.STEP, ("quarantine",))
    ledger.commit(unit, {"stage": "stage1", "generation": 0, "shards": [entry], "split": ""})
    build.write_json_atomic(
        records.record_path(build, "stage1", 0), {"generation": 0, "complete": True}
    )
    return build, stage_dir / name


def test_a_truncated_shard_is_found_and_its_generation_reopened(tmp_path: Path) -> None:
    build, tar = _shard_build(tmp_path)
    assert inspect(build).findings == []
    os.truncate(tar, 1000)
    [finding] = inspect(build).damage  # the marker and index.json name it once
    assert finding.path == "shards/stage1/stage1-g0000-000000.tar"
    assert finding.unit == "stage1-g0000-000000" and "1000 bytes, written with 4096" in finding.what
    result = repair(build, inspect(build))
    assert {m["from"] for m in result.moved} == {
        "shards/stage1/stage1-g0000-000000.tar",
        "shards/stage1/_index/stage1-g0000-000000.tar.idx",
        "_state/shards/done/stage1-g0000-000000.json",
    }
    assert build.read_json(records.record_path(build, "stage1", 0))["complete"] is False
    assert "shards stage1 generation 0 reopened" in result.notes


def test_a_shard_index_json_lists_but_the_disk_lacks_is_damage(tmp_path: Path) -> None:
    build, tar = _shard_build(tmp_path)
    tar.unlink()
    [finding] = inspect(build).damage
    assert finding.path.endswith("stage1-g0000-000000.tar") and finding.what.startswith("missing")
