"""Atomic writes: the whole file under its name or nothing, no temp file left behind, and a
killed writer's temp file swept by the next run (never a live writer's)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.fs as pafs
import pytest

from minmo.io.atomic import (
    STALE_AFTER_S,
    is_stale,
    stale_temp_files,
    sweep_temp_files,
    write_bytes_atomic,
    write_text_atomic,
)
from minmo.io.shards import ShardTarWriter, encode_sample
from schemas.shards import HOST_TAG, final_name, is_temp_name, temp_name, temp_owner

REPO = Path(__file__).resolve().parents[2]


def test_a_write_replaces_the_file_and_leaves_no_temp_name(tmp_path: Path) -> None:
    fs = pafs.LocalFileSystem()
    target = tmp_path / "a" / "b.json"
    write_bytes_atomic(fs, str(target), b"one")
    write_text_atomic(fs, str(target), "twö")
    assert target.read_text(encoding="utf-8") == "twö"
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]


def test_a_failed_write_removes_its_temp_file(tmp_path: Path) -> None:
    fs = pafs.LocalFileSystem()

    def no_move(src: str, dest: str) -> None:
        assert is_temp_name(src)
        raise OSError("disk went away")

    class NoMove:
        type_name = "local"

        def __getattr__(self, name: str):
            return getattr(fs, name)

        move = staticmethod(no_move)

    with pytest.raises(OSError, match="disk went away"):
        write_bytes_atomic(NoMove(), str(tmp_path / "x.bin"), b"data")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# -- leftovers of killed writers ---------------------------------------------------------------


def test_a_temp_name_carries_its_writer(dead_pid: int) -> None:
    name = temp_name("s-g0000-000001.tar", pid=dead_pid)
    assert name.startswith(".s-g0000-000001.tar.tmp-") and is_temp_name(name)
    assert temp_owner(name) == (dead_pid, HOST_TAG)
    assert temp_owner(f"/a/b/{name}") == (dead_pid, HOST_TAG)
    assert final_name(name) == "s-g0000-000001.tar"
    assert temp_owner(".x.tar.tmp-1") is None  # an older name: no owner
    assert temp_owner("x.tar") is None


def test_a_writer_is_gone_when_its_pid_is_dead_reused_or_its_file_is_old(dead_pid: int) -> None:
    now = time.time()
    me = psutil.Process(os.getpid())
    assert not is_stale((os.getpid(), HOST_TAG), now)  # this process: alive
    assert is_stale((dead_pid, HOST_TAG), now)
    # the pid is alive, but its process started after the file was last written: reused
    assert is_stale((os.getpid(), HOST_TAG), me.create_time() - 60)
    other = "0" * 8 if HOST_TAG != "0" * 8 else "1" * 8
    assert not is_stale((dead_pid, other), now)  # another host: only the age tells
    assert not is_stale(None, now - 60)
    assert is_stale((dead_pid, other), now - STALE_AFTER_S - 1)
    assert is_stale(None, now - STALE_AFTER_S - 1)
    assert not is_stale(None, None)  # nothing to judge by: kept


def test_sweep_removes_only_dead_writers_files(tmp_path: Path, dead_pid: int) -> None:
    fs = pafs.LocalFileSystem()
    dead = tmp_path / temp_name("a.tar", pid=dead_pid)
    alive = tmp_path / temp_name("b.tar")
    old = tmp_path / ".c.tar.tmp-7"  # no owner: judged by its age
    for path in (dead, alive, old, tmp_path / "a.tar"):
        path.write_bytes(b"x")
    assert stale_temp_files(fs, str(tmp_path)) == [str(dead)]
    os.utime(old, (time.time() - STALE_AFTER_S - 10,) * 2)
    assert sweep_temp_files(fs, str(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.tar", alive.name])
    assert sweep_temp_files(fs, str(tmp_path / "nowhere")) == 0


_KILLED_WRITER = """
import sys, time
import numpy as np
from minmo.io.shards import ShardTarWriter, encode_sample
writer = ShardTarWriter(sys.argv[1], "s-g0000-000000.tar")
writer.add(encode_sample({"__key__": "k0", "json": {"a": 1}, "text_tokens.npy": np.arange(9)}))
writer._raw.flush()
print("writing", flush=True)
time.sleep(60)
"""


def test_a_shard_write_killed_midway_is_swept_to_a_clean_directory(tmp_path: Path) -> None:
    """SIGKILL a real shard writer mid-tar; the sweep a step runs at its start leaves the stage
    directory exactly as a clean writer's: the finished shard and its index, nothing else."""
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(killed)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    [left] = list(killed.iterdir())
    assert is_temp_name(left.name) and temp_owner(left.name) == (proc.pid, HOST_TAG)
    fs = pafs.LocalFileSystem()
    assert sweep_temp_files(fs, str(killed)) == 1
    for stage in (killed, clean):  # the rerun of the killed write, and a clean one
        writer = ShardTarWriter(stage, "s-g0000-000000.tar")
        writer.add(
            encode_sample({"__key__": "k0", "json": {"a": 1}, "text_tokens.npy": np.arange(9)})
        )
        writer.close()
    assert _tree(killed) == _tree(clean)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
