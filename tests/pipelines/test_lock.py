"""One run per build and step: a second `minmo` on the same build and step refuses at once,
naming the holder; a lock whose holder died is taken over (local disk and object stores)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from minmo.cli import main
from pipelines.build import BuildDir
from pipelines.lock import BuildLock, StepLocked, lock_path, pid_alive, running_steps
from tests.pipelines.lock_holder import hold_lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)
    return proc.pid


def test_a_second_run_of_a_step_is_refused_at_once_naming_the_holder(tmp_path: Path) -> None:
    build = BuildDir(str(tmp_path / "b"))
    holder = hold_lock(build.uri, "ingest")
    try:
        started = time.perf_counter()
        with pytest.raises(StepLocked) as refused, BuildLock(build, "ingest"):
            pass
        assert time.perf_counter() - started < 1
        message = str(refused.value)
        assert f"pid {holder.pid} on {socket.gethostname()}" in message
        with BuildLock(build, "shards"):  # another step of the same build may run
            assert running_steps(build) == {"ingest": refused.value.holder}
    finally:
        holder.kill()
        holder.wait()
    # Killed with SIGKILL: its lock file stays, but the kernel dropped the lock with it.
    assert os.path.exists(lock_path(build, "ingest"))
    with BuildLock(build, "ingest"):
        held = json.loads(Path(lock_path(build, "ingest")).read_text())
        assert held["pid"] == os.getpid()
    assert not os.path.exists(lock_path(build, "ingest"))  # released: no file left


def test_a_stale_lock_file_of_a_dead_process_is_taken(tmp_path: Path) -> None:
    build = BuildDir(str(tmp_path / "b"))
    path = Path(lock_path(build, "shards"))
    path.parent.mkdir(parents=True)
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "step": "shards"}
    path.write_text(json.dumps(stale))
    with BuildLock(build, "shards"):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_the_cli_refuses_a_second_step_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build = str(tmp_path / "b")
    holder = hold_lock(build, "ingest")
    try:
        started = time.perf_counter()
        assert main(["-q", "ingest", str(tmp_path / "nowhere"), "--build", build]) == 4
        assert time.perf_counter() - started < 5  # before Ray, before listing the sources
        err = capsys.readouterr().err
        assert f"another `minmo ingest` is running on this build: pid {holder.pid}" in err
        assert "Traceback" not in err
    finally:
        holder.kill()
        holder.wait()


def test_object_store_locks_detect_a_dead_holder_on_this_host(moto_s3_options: dict) -> None:
    s3 = pafs.S3FileSystem(**moto_s3_options, allow_bucket_creation=True)
    s3.create_dir("locks")
    build = BuildDir("s3://locks/b", **moto_s3_options)
    path = lock_path(build, "ingest")

    def write(holder: dict) -> None:
        with build.fs.open_output_stream(path) as out:
            out.write(json.dumps(holder).encode())

    write({"pid": os.getppid(), "host": socket.gethostname()})  # alive: refused
    with pytest.raises(StepLocked), BuildLock(build, "ingest"):
        pass
    write({"pid": 1234, "host": "another-node"})  # cannot be asked: refused, with the way out
    with pytest.raises(StepLocked, match=f"delete {path}"), BuildLock(build, "ingest"):
        pass
    write({"pid": _dead_pid(), "host": socket.gethostname()})  # dead here: taken
    with BuildLock(build, "ingest"), build.fs.open_input_stream(path) as f:
        assert json.loads(f.read())["pid"] == os.getpid()
    assert not build.exists(path)
