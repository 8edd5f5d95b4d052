"""A model directory named by a store URI: copied once into the local cache, reused while the
store's listing is unchanged, recopied when it changes; local paths pass through."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from minmo.io.trees import CACHE_ENV, FETCHED_MARKER, local_dir, upload_tree


@pytest.fixture()
def store(tmp_path: Path, moto_s3_options: dict, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    fs = pafs.S3FileSystem(**moto_s3_options, allow_bucket_creation=True)
    bucket = f"trees-{uuid.uuid4().hex[:12]}"
    fs.create_dir(bucket)
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.yaml").write_text("model: x\n")
    (src / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    upload_tree(src, fs, f"{bucket}/models/m", last="config.yaml")
    return fs, f"s3://{bucket}/models/m", moto_s3_options


def test_a_local_path_is_used_as_it_is(tmp_path: Path) -> None:
    assert local_dir(str(tmp_path)) == tmp_path
    assert local_dir(f"file://{tmp_path}") == tmp_path


def test_a_store_directory_is_copied_once_and_reused(store) -> None:
    fs, uri, options = store
    first = local_dir(uri, options)
    assert (first / "config.yaml").read_text() == "model: x\n"
    assert (first / "sub" / "weights.bin").read_bytes() == b"\x00\x01" * 1000
    stamp = (first / FETCHED_MARKER).stat().st_mtime_ns
    again = local_dir(uri, options)
    assert again == first and (again / FETCHED_MARKER).stat().st_mtime_ns == stamp
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")], "staging left"


def test_a_changed_store_directory_is_copied_again(store) -> None:
    fs, uri, options = store
    first = local_dir(uri, options)
    with fs.open_output_stream(f"{uri.removeprefix('s3://')}/config.yaml") as f:
        f.write(b"model: y, retrained\n")
    second = local_dir(uri, options)
    assert second == first
    assert (second / "config.yaml").read_text() == "model: y, retrained\n"


def test_a_missing_store_directory_says_so(store) -> None:
    _, uri, options = store
    with pytest.raises(FileNotFoundError, match="no such directory"):
        local_dir(f"{uri}-missing", options)
