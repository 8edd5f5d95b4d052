"""Atomic writes: the whole file under its name or nothing, and no temp file left behind."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from minmo.io.atomic import write_bytes_atomic, write_text_atomic
from schemas.shards import is_temp_name


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
