"""A real ingest build through `minmo` (in process, on the session's Ray): a damaged committed
part stops the rerun with the file and the repair named, `minmo doctor --fix` then a rerun gives
the clean build again; a full disk stops the step with one line naming the path, and the rerun
after space is freed gives the clean build again."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import soundfile as sf

import pipelines.build
from minmo.cli import main
from minmo.io.errors import naming_disk_full
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.run import TABLES, run_ingest
from tests.tmpfs import mount_tmpfs, unmount

pytestmark = pytest.mark.slow
FILES_PER_UNIT = 4
FILES = 12
TMPFS_SIZE = "30m"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(3)
    t = np.arange(16000 * 2) / 16000
    for i in range(FILES):
        tone = 0.3 * np.sin(2 * np.pi * (180 + 25 * i) * t) * (t % 1.0 < 0.6)
        noisy = (tone + rng.standard_normal(t.size) * 0.003).astype(np.float32)
        sf.write(root / f"u{i:03d}.wav", noisy, 16000)
        (root / f"u{i:03d}.txt").write_text(f"utterance {i}")
    return root


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory, ray_local) -> Path:
    """The clean build every damaged one must come back to."""
    build = tmp_path_factory.mktemp("reference") / "build"
    run_ingest(str(corpus), str(build), IngestConfig(files_per_unit=FILES_PER_UNIT), False)
    return build


@pytest.fixture(autouse=True)
def _restore_ray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A disk-full report quiets Ray's repeats of it for the rest of the process.
    monkeypatch.delenv("RAY_IGNORE_UNHANDLED_ERRORS", raising=False)


def _ingest(corpus: Path, build: Path) -> int:
    return main(
        [
            "-q",
            "ingest",
            str(corpus),
            "--build",
            str(build),
            "--files-per-unit",
            str(FILES_PER_UNIT),
        ]
    )


def _snapshot(build: Path) -> dict:
    """Each table's rows (sorted) and part names, and the committed units."""
    out: dict = {"units": sorted(os.listdir(build / "_state" / "ingest" / "done"))}
    for table in TABLES:
        folder = build / table
        parts = sorted(p.name for p in folder.glob("*.parquet")) if folder.is_dir() else []
        rows = pads.dataset(str(folder), format="parquet").to_table().to_pylist() if parts else []
        out[table] = (parts, sorted(json.dumps(r, sort_keys=True, default=str) for r in rows))
    return out


def test_a_truncated_segments_part_stops_the_rerun_and_doctor_fix_restores_the_build(
    corpus: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build = tmp_path / "build"
    shutil.copytree(reference, build)
    part = sorted((build / "segments").glob("*.parquet"))[0]
    os.truncate(part, part.stat().st_size // 2)

    assert _ingest(corpus, build) == 3
    err = capsys.readouterr().err
    assert f"segments/{part.name}" in err and "truncated" in err
    assert f"minmo doctor --build {build} --fix" in err and "Traceback" not in err

    assert main(["doctor", "--build", str(build)]) == 1
    assert f"damaged: segments/{part.name}" in capsys.readouterr().out
    assert main(["doctor", "--build", str(build), "--fix"]) == 0
    fixed = capsys.readouterr().out
    assert "ingest commit index rebuilt" in fixed and "no inconsistency found" in fixed
    assert len(list((build / "_state" / "doctor").glob(f"*/segments/{part.name}"))) == 1

    assert _ingest(corpus, build) == 0
    assert f"1 unit(s) run, {FILES // FILES_PER_UNIT - 1} already committed" in (
        capsys.readouterr().out
    )
    assert _snapshot(build) == _snapshot(reference)


def test_disk_full_at_a_commit_stops_with_one_line_and_the_rerun_completes(
    corpus: Path,
    reference: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The disk fills when the second unit's done marker is written (ENOSPC from the OS,
    simulated under the writer's own naming)."""
    build = tmp_path / "build"
    real = pipelines.build.write_bytes_atomic
    markers: list[str] = []

    def full_at_second_marker(fs, path: str, data: bytes, **kw) -> None:
        if "/_state/ingest/done/" in path:
            markers.append(path)
            if len(markers) == 2:
                with naming_disk_full(path):
                    raise OSError(28, "No space left on device")
        real(fs, path, data, **kw)

    monkeypatch.setattr(pipelines.build, "write_bytes_atomic", full_at_second_marker)
    assert _ingest(corpus, build) == 5
    err = capsys.readouterr().err
    assert f"the disk is full (no space left on device) writing {markers[1]}" in err
    assert "Traceback" not in err
    monkeypatch.setattr(pipelines.build, "write_bytes_atomic", real)

    assert _ingest(corpus, build) == 0
    assert _snapshot(build) == _snapshot(reference)


def test_a_build_on_a_full_30mb_tmpfs_stops_and_completes_once_space_is_freed(
    corpus: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mount = tmp_path / "tmpfs"
    why = mount_tmpfs(mount, TMPFS_SIZE)
    if why:
        pytest.skip(f"{why}; the simulated disk-full test above covers the step's side")
    try:
        ballast = mount / "ballast"
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        with open(ballast, "wb") as f:  # leave 40 KB: the build's first files fit, no more
            f.write(b"\0" * (free - 40 * 1024))
        build = mount / "build"
        assert _ingest(corpus, build) == 5
        err = capsys.readouterr().err
        assert "the disk is full (no space left on device) writing " + str(build) in err
        assert "Traceback" not in err

        ballast.unlink()
        assert _ingest(corpus, build) == 0
        assert _snapshot(build) == _snapshot(reference)
    finally:
        unmount(mount)
