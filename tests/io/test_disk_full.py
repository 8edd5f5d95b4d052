"""A full disk is said as such and names the file: the writers' own errors on a real full
filesystem (a small tmpfs, where this machine lets the test mount one), and the search for it
through the chains Ray wraps worker errors in."""

from __future__ import annotations

import errno
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from minmo.io.atomic import write_bytes_atomic
from minmo.io.errors import DiskFullError, disk_full_message, find_disk_full, naming_disk_full
from minmo.io.parquet import write_table
from tests.tmpfs import mount_tmpfs, unmount


@pytest.fixture()
def full_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a 1 MB tmpfs that is already full."""
    mount = tmp_path / "small"
    why = mount_tmpfs(mount, "1m")
    if why:
        pytest.skip(why)
    try:
        with open(mount / "ballast", "wb") as f:
            try:
                f.write(b"\0" * (2 << 20))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        yield mount
    finally:
        unmount(mount)


def test_the_writers_name_the_file_on_a_full_filesystem(full_dir: Path) -> None:
    fs = pafs.LocalFileSystem()
    table = pa.table({"x": list(range(100_000))})
    with pytest.raises(DiskFullError) as raised:
        write_table(fs, str(full_dir / "t" / "part.parquet"), table)
    assert raised.value.filename == str(full_dir / "t" / "part.parquet")
    with pytest.raises(DiskFullError) as raised:
        write_bytes_atomic(fs, str(full_dir / "m" / "done.json"), b"{}" * 100_000)
    assert raised.value.filename == str(full_dir / "m" / "done.json")
    assert os.listdir(full_dir / "m") == []  # the atomic write removed its temp file
    assert "disk is full" in disk_full_message(raised.value)
    assert str(full_dir / "m" / "done.json") in disk_full_message(raised.value)


def test_only_a_full_disk_is_renamed() -> None:
    with pytest.raises(PermissionError), naming_disk_full("/x"):
        raise PermissionError(errno.EACCES, "denied")
    with pytest.raises(DiskFullError), naming_disk_full("/x"):
        raise OSError(errno.EDQUOT, "quota")


class _RayTaskError(Exception):
    """Ray's task errors carry the worker's exception as `.cause`, not `__cause__`."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("task failed")
        self.cause = cause


def test_the_disk_full_error_is_found_through_wrappers_and_pickles() -> None:
    inner = DiskFullError(errno.ENOSPC, "No space left on device", "/b/segments/p.parquet")
    again = pickle.loads(pickle.dumps(inner))
    assert (again.errno, again.filename) == (errno.ENOSPC, "/b/segments/p.parquet")
    try:
        try:
            raise _RayTaskError(again)
        except _RayTaskError as exc:
            raise RuntimeError("ingest: a batch failed") from exc
    except RuntimeError as outer:
        assert find_disk_full(outer) is again
    assert find_disk_full(RuntimeError("unrelated")) is None
    bare = find_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert bare is not None and bare.filename is None
