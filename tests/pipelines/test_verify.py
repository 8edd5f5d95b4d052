"""Shard verification on the v2 layout: a sound stage passes, each kind of damage is named, on a
local path, a file:// URI and the moto S3 server alike."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

from pipelines.shards.writer import write_stage_shards
from pipelines.verify import verify_shards, verify_stage
from schemas.shards import OFFSETS_DTYPE, index_path, offsets_path, shard_name, temp_name
from tests.objectstore import upload_tree
from tests.pipelines.test_shards_core import make_samples

NAMES = [shard_name("s1", i) for i in range(3)]


@pytest.fixture
def stage(tmp_path: Path) -> tuple[Path, dict]:
    d = tmp_path / "shards" / "s1"
    return d, write_stage_shards(make_samples(), d, "s1", max_samples=10)


def test_verify_ok(stage: tuple[Path, dict]) -> None:
    d, index = stage
    assert [s["name"] for s in index["shards"]] == NAMES
    assert verify_stage(d) == []
    assert verify_stage(str(d)) == []
    assert verify_shards(d.parent) == {"s1": []}
    assert verify_shards(d) == {"s1": []}  # a stage directory itself
    assert verify_shards(f"file://{d.parent}") == {"s1": []}


def test_verify_flipped_byte(stage: tuple[Path, dict]) -> None:
    d, _ = stage
    p = d / NAMES[1]
    data = bytearray(p.read_bytes())
    data[700] ^= 0xFF
    p.write_bytes(bytes(data))
    problems = verify_stage(d)
    assert problems and NAMES[1] in problems[0]
    assert any("sha256 does not match" in x for x in problems)


def test_verify_truncated(stage: tuple[Path, dict]) -> None:
    d, _ = stage
    p = d / NAMES[2]
    p.write_bytes(p.read_bytes()[:3000])
    problems = verify_stage(d)
    assert problems and NAMES[2] in problems[0]


def test_verify_missing_json_member(stage: tuple[Path, dict]) -> None:
    d, index = stage
    p = d / NAMES[0]
    # Rewrite the shard without one sample's .json, and update index.json so only the member
    # check can catch it.
    out = io.BytesIO()
    dropped = None
    with (
        tarfile.open(p) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst,
    ):
        for m in src.getmembers():
            if dropped is None and m.name.endswith(".json"):
                dropped = m.name.split(".")[0]
                continue
            dst.addfile(m, src.extractfile(m))
    p.write_bytes(out.getvalue())
    index["shards"][0]["bytes"] = p.stat().st_size
    index["shards"][0]["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    Path(index_path(str(d))).write_text(json.dumps(index))
    problems = verify_stage(d)
    assert problems and NAMES[0] in problems[0] and dropped in problems[0]
    assert any("missing required member 'json'" in x for x in problems)


def test_idx_offset_off_by_one_block_is_named(stage: tuple[Path, dict]) -> None:
    d, _ = stage
    idx = Path(offsets_path(str(d), NAMES[0]))
    offsets = np.fromfile(idx, dtype=OFFSETS_DTYPE)
    with tarfile.open(d / NAMES[0]) as tar:
        headers = [m.offset for m in tar.getmembers()]
    # the header after sample 3's first: a member of the same sample, but not its first
    offsets[3] = headers[headers.index(int(offsets[3])) + 1]
    offsets.tofile(idx)
    problems = verify_stage(d)
    assert any(".idx offset" in p and "a later member of" in p for p in problems), problems
    offsets[3] += 1
    offsets.tofile(idx)
    assert any("points at no member header" in p for p in verify_stage(d))
    idx.unlink()
    assert f"{NAMES[0]}: -: missing _index/{NAMES[0]}.idx" in verify_stage(d)


def test_unlisted_tars_are_reported_live_writers_temp_files_are_not(
    stage: tuple[Path, dict],
) -> None:
    d, _ = stage
    shutil.copy(d / NAMES[0], d / shard_name("s1", 0, generation=1))
    shutil.copy(d / NAMES[0], d / temp_name(NAMES[1]))  # a writer still at work: this process
    assert verify_stage(d) == [f"{shard_name('s1', 0, 1)}: -: tar not listed in _index/index.json"]


def test_a_killed_writers_temp_file_is_reported(stage: tuple[Path, dict], dead_pid: int) -> None:
    d, _ = stage
    tar = temp_name(NAMES[1], pid=dead_pid)
    idx = f"_index/{temp_name(NAMES[1] + '.idx', pid=dead_pid)}"
    shutil.copy(d / NAMES[0], d / tar)
    (d / idx).write_bytes(b"\0" * 8)
    assert verify_stage(d) == [
        f"{name}: -: stray temp file of a writer that is gone; the next `minmo shards` removes it"
        for name in sorted([tar, idx])
    ]


def test_missing_index_and_old_layout(stage: tuple[Path, dict], tmp_path: Path) -> None:
    d, _ = stage
    shutil.move(index_path(str(d)), d / "index.json")  # where version 1 kept it
    problems = verify_stage(d)
    assert len(problems) == 1 and "missing _index/index.json" in problems[0]
    assert "version-1 layout" in problems[0]
    assert verify_shards(d.parent) == {}  # not a stage directory of this layout
    assert verify_shards(tmp_path / "nowhere") == {}


@pytest.mark.slow
def test_verify_on_s3(stage: tuple[Path, dict], moto_s3_options: dict) -> None:
    d, _ = stage
    (d / temp_name(NAMES[0])).write_bytes(b"partial")  # a live writer's: uploaded, not a tar
    root = upload_tree(d.parent, moto_s3_options, prefix="build/shards")
    assert verify_shards(root, moto_s3_options) == {"s1": []}
    assert verify_shards(f"{root}/s1", moto_s3_options) == {"s1": []}
    # damage one object in the bucket: named, as on local disk
    s3 = pafs.S3FileSystem(**moto_s3_options)
    key = f"{root.removeprefix('s3://')}/s1/{NAMES[1]}"
    data = bytearray((d / NAMES[1]).read_bytes())
    data[700] ^= 0xFF
    with s3.open_output_stream(key) as out:
        out.write(bytes(data))
    problems = verify_shards(root, moto_s3_options)["s1"]
    assert problems and NAMES[1] in problems[0]


def test_stage4_needs_an_activity_track_as_long_as_its_labels() -> None:
    from minmo.io.shards import npy_bytes
    from pipelines.verify import _check_consistency, _check_member

    labels = npy_bytes(np.zeros(5, dtype=np.int8))
    members = {
        "json": json.dumps({"n_labels": 5}).encode(),
        "flac": b"",
        "text_tokens.npy": npy_bytes(np.arange(3)),
        "labels.npy": labels,
    }
    index = {"stage": "stage4"}
    assert any("assistant_activity.npy" in p for p in _check_consistency(index, members))
    members["assistant_activity.npy"] = npy_bytes(np.ones(4, dtype=np.int8))
    assert _check_consistency(index, members) == [
        "assistant_activity.npy has 4 entries, labels.npy 5"
    ]
    members["assistant_activity.npy"] = npy_bytes(np.ones(5, dtype=np.int8))
    assert _check_consistency(index, members) == []
    bad = npy_bytes(np.full(5, 2, dtype=np.int8))
    assert "outside 0..1" in (_check_member("assistant_activity.npy", bad) or "")
