"""Shard statistics against hand-computed values: a stage of two hand-written shards whose
_index/index.json asks for a mixture the shards do not quite meet."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from minmo.io.shards import iter_members
from pipelines.build import BuildDir
from pipelines.stats import shard_stats
from pipelines.stats.compute import StatsConfig, compute_stats
from pipelines.stats.sources import discover
from schemas.shards import META_DIR, index_path, shard_name

# (shard, key, task, corpus, seconds, speech tokens); 25 tokens per second throughout
SAMPLES = [
    (0, "s0", "tts", "a", 2.0, 50),
    (0, "s1", "tts", "a", 4.0, 100),
    (0, "s2", "instruct_tts", "a", 1.0, 25),
    (1, "s3", "tts", "b", 3.0, 75),
]


def write_stage(root: Path) -> Path:
    stage = root / "shards" / "stage2"
    stage.mkdir(parents=True)
    entries = []
    for shard in (0, 1):
        name = shard_name("stage2", shard)
        rows = [s for s in SAMPLES if s[0] == shard]
        with wds.TarWriter(str(stage / name)) as tar:
            for _, key, task, corpus, seconds, tokens in rows:
                meta = {
                    "key": key,
                    "stage": "stage2",
                    "task": task,
                    "language": "en",
                    "duration_s": seconds,
                    "input_duration_s": 0.0,
                    "target_speech_s": seconds,
                    "n_text_tokens": 10,
                    "n_speech_tokens": tokens,
                    "n_labels": 0,
                    "provenance": {"corpus": corpus},
                }
                # a large member before the json: the reader must skip it, not read it
                tar.write({"__key__": key, "flac": b"\0" * 100_000, "json": json.dumps(meta)})
        data = (stage / name).read_bytes()
        entries.append(
            {
                "name": name,
                "samples": len(rows),
                "audio_s": sum(r[4] for r in rows),
                "speech_s": sum(r[4] for r in rows),
                "speech_tokens": sum(r[5] for r in rows),
                "text_tokens": 10 * len(rows),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    index = {
        "stage": "stage2",
        "shards": entries,
        "tasks": {
            "tts": {"samples": 3, "audio_s": 9.0},
            "instruct_tts": {"samples": 1, "audio_s": 1.0},
        },
        # the job asked instruct_tts x3: target 3*1 / (3*1 + 1*3) = 0.5, achieved 1/4
        "mixture": {
            "tts": {"weight": 1.0, "built": 3, "kept": 3},
            "instruct_tts": {"weight": 3.0, "built": 1, "kept": 1},
        },
        "quarantined": {"sample_failed": 2},
    }
    (stage / META_DIR).mkdir()
    Path(index_path(str(stage))).write_text(json.dumps(index))
    return root


@pytest.fixture()
def built(tmp_path):
    root = write_stage(tmp_path / "build")
    out = tmp_path / "out"
    return root, out, compute_stats(str(root), StatsConfig(out=str(out)), progress=False)


def test_samples_from_the_json_members(built):
    _, _, stats = built
    smp = stats["samples"]
    assert (smp["count"], smp["hours"]) == (4, pytest.approx(10 / 3600, abs=1e-6))
    assert {r["key"]: r["count"] for r in smp["by"]["task"]} == {"tts": 3, "instruct_tts": 1}
    assert {r["key"]: r["count"] for r in smp["by"]["corpus"]} == {"a": 3, "b": 1}
    assert smp["tokens"]["stage2"]["speech_tokens"] == 250
    assert smp["tokens"]["stage2"]["speech_tokens_per_s"] == pytest.approx(25.0)
    dur = smp["duration_s"]["by"]["stage"]["stage2"]
    assert (dur["n"], dur["min"], dur["max"], dur["mean"]) == (4, 1.0, 4.0, 2.5)
    assert smp["duration_s"]["by"]["task"]["tts"]["n"] == 3


def test_shard_balance_and_mixture_against_the_weights(built):
    _, _, stats = built
    st = stats["shards"]["stage2"]
    assert (st["shards"], st["samples"]) == (2, 4)
    assert [s["samples"] for s in st["per_shard"]] == [3, 1]
    # samples per shard 3 and 1: mean 2, population sd 1, CV 0.5
    assert st["spread"]["samples"] == {"min": 3 - 2, "max": 3, "mean": 2, "cv": 0.5}
    assert st["speech_tokens_per_s"] == pytest.approx(25.0)
    mix = {m["task"]: m for m in st["mixture"]}
    assert mix["instruct_tts"]["target_share"] == pytest.approx(0.5)
    assert mix["instruct_tts"]["share"] == pytest.approx(0.25)
    assert mix["instruct_tts"]["share_delta"] == pytest.approx(-0.25)
    assert mix["tts"]["share_delta"] == pytest.approx(0.25)
    assert st["quarantined"] == {"sample_failed": 2}


def test_sample_metadata_is_read_once_per_shard(built):
    """A rerun reads the cached per-shard files: it works even with the tars gone."""
    root, out, first = built
    cached = sorted((out / "_samples" / "stage2").glob("*.parquet"))
    assert len(cached) == 2
    for tar in (root / "shards" / "stage2").glob("*.tar"):
        tar.unlink()
    again = compute_stats(str(root), StatsConfig(out=str(out)), progress=False)
    assert again["samples"] == first["samples"]
    assert sorted((out / "_samples" / "stage2").glob("*.parquet")) == cached


def test_an_unreadable_shard_is_reported_and_left_out(tmp_path):
    root = write_stage(tmp_path / "build")
    tar = root / "shards" / "stage2" / shard_name("stage2", 0)
    tar.write_bytes(tar.read_bytes()[:700])  # truncated inside its first member
    stats = compute_stats(str(root), StatsConfig(out=str(tmp_path / "out")), progress=False)
    assert stats["samples"]["count"] == 1  # shard 1's sample only
    assert [(e["section"], e["source"]) for e in stats["errors"]] == [("samples", str(tar))]
    assert stats["shards"]["stage2"]["samples"] == 4  # index.json figures still shown


def test_shards_of_several_builds_are_named_by_their_folder(tmp_path):
    write_stage(tmp_path / "x" / "one")
    write_stage(tmp_path / "x" / "two")
    stats = compute_stats(str(tmp_path / "x"), StatsConfig(out=str(tmp_path / "o")), progress=False)
    names = [s["name"] for s in stats["shards"]["stage2"]["per_shard"]]
    assert names == [
        f"{b}/shards/{shard_name('stage2', i)}" for b in ("one", "two") for i in (0, 1)
    ]
    assert stats["samples"]["count"] == 8


def test_past_max_shard_rows_a_stage_keeps_distributions_and_its_worst_shards(tmp_path):
    """The same two shards, listed (threshold 1000) and summarised (threshold 1): the
    distributions and worst shards agree with the listed rows, and no row per shard is kept."""
    root = write_stage(tmp_path / "build")
    listed = compute_stats(str(root), StatsConfig(out=str(tmp_path / "o")), progress=False)
    small = compute_stats(
        str(root),
        StatsConfig(out=str(tmp_path / "o"), max_shard_rows=1, worst_shards=1),
        progress=False,
    )
    a, b = listed["shards"]["stage2"], small["shards"]["stage2"]
    assert b["per_shard"] is None and len(a["per_shard"]) == 2
    assert a["per_shard_dist"] == b["per_shard_dist"]
    assert {k: v for k, v in a.items() if k not in ("per_shard", "worst")} == {
        k: v for k, v in b.items() if k not in ("per_shard", "worst")
    }
    samples = b["per_shard_dist"]["samples"]
    assert (samples["n"], samples["min"], samples["max"], samples["sum"]) == (2, 1, 3, 4)
    edges = samples["edges"]
    # 1 sample falls in [1, 1.25), 3 samples in [2.5, 3.15)
    assert [edges[i] for i, c in enumerate(samples["counts"]) if c] == [1.0, 2.5]
    by_name = {s["name"]: s for s in a["per_shard"]}
    big, little = shard_name("stage2", 0), shard_name("stage2", 1)
    assert b["worst"]["fewest_samples"] == [by_name[little]]
    assert b["worst"]["most_samples"] == [by_name[big]]
    assert b["worst"]["most_bytes"] == [by_name[big]]  # three 100 kB members against one
    assert b["worst"]["fewest_hours"] == [by_name[little]]
    assert a["worst"]["most_hours"] == [by_name[big], by_name[little]]


def test_the_metadata_of_each_shard_is_read_by_a_ray_task(tmp_path, ray_local, monkeypatch):
    """Extraction runs in Ray worker processes (the caller's Ray instance is kept): a reader
    broken in the driver only must not matter. `workers` caps the tasks in flight."""

    def not_here(*args, **kwargs):
        raise AssertionError("shard metadata read in the driver")

    monkeypatch.setattr(shard_stats, "read_sample_meta", not_here)
    root = write_stage(tmp_path / "build")
    files, bad = shard_stats.extract_samples(
        discover(str(root)), BuildDir(str(tmp_path / "out")), workers=1, progress=False
    )
    assert bad == [] and len(files) == 2
    assert sum(pq.read_metadata(f).num_rows for f in files) == len(SAMPLES)


def test_the_header_walk_reads_what_tarfile_reads_and_falls_back_for_other_tars(tmp_path):
    """Shards are read by walking their plain headers; a tar with a PAX header (a long member
    name) goes to tarfile, and a header with a wrong checksum is an error, not a skip."""
    fs = pafs.LocalFileSystem()
    root = write_stage(tmp_path / "build")
    tar = str(root / "shards" / "stage2" / shard_name("stage2", 0))
    with open(tar, "rb") as raw:
        members = iter_members(raw, stream=False, want=lambda ext: ext == "json")
        by_tarfile = shard_stats._rows(
            ((m.name, m.data) for m in members if m.data is not None), "x"
        )
    assert shard_stats.read_sample_meta(fs, tar, "x").equals(by_tarfile)
    assert by_tarfile.num_rows == 3

    other = tmp_path / "pax.tar"
    key = "k" * 120  # past ustar's 100-byte name field: a PAX header carries it
    with tarfile.open(other, "w", format=tarfile.PAX_FORMAT) as out:
        data = json.dumps({"task": "asr", "duration_s": 2.5}).encode()
        info = tarfile.TarInfo(f"{key}.json")
        info.size = len(data)
        out.addfile(info, io.BytesIO(data))
    table = shard_stats.read_sample_meta(fs, str(other), "pax")
    assert table.column("key").to_pylist() == [key]
    assert table.column("duration_s").to_pylist() == [2.5]

    corrupt = bytearray(Path(tar).read_bytes())
    corrupt[3] ^= 0xFF  # inside the first member's name: its checksum no longer holds
    (tmp_path / "bad.tar").write_bytes(bytes(corrupt))
    with pytest.raises(tarfile.HeaderError, match="checksum at byte 0"):
        shard_stats.read_sample_meta(fs, str(tmp_path / "bad.tar"), "bad")


def write_split_stage(root: Path) -> Path:
    """The stage of `write_stage` held out as `train/` and `valid/` (the same two shards in
    each, renamed apart), each index.json repeating the stage-wide counts as the shards step
    writes them: the mixture and what the quality filters removed."""
    write_stage(root / "tmp")
    source = root / "tmp" / "shards" / "stage2"
    index = json.loads(Path(index_path(str(source))).read_text())
    filtered = {"tts": {"min_snr_db": {"samples": 5, "hours": 0.01}}}
    for n, split in enumerate(("train", "valid")):
        target = root / "shards" / "stage2" / split
        (target / META_DIR).mkdir(parents=True)
        shards = []
        for entry in index["shards"]:
            name = entry["name"].replace("-g0000-", f"-g000{n}-")
            (target / name).write_bytes((source / entry["name"]).read_bytes())
            shards.append({**entry, "name": name})
        split_index = {**index, "shards": shards, "split": split, "filtered": filtered}
        split_index["totals"] = {"samples": 4, "audio_s": 10.0}
        Path(index_path(str(target))).write_text(json.dumps(split_index))
    shutil.rmtree(root / "tmp")
    return root


def test_a_split_stage_counts_each_split_and_its_stage_wide_figures_once(tmp_path):
    root = write_split_stage(tmp_path / "build")
    stats = compute_stats(str(root), StatsConfig(out=str(tmp_path / "out")), progress=False)
    st = stats["shards"]["stage2"]
    assert (st["shards"], st["samples"]) == (4, 8)  # both splits' shards
    assert st["splits"] == {
        "train": {"shards": 2, "samples": 4, "hours": pytest.approx(10 / 3600, abs=1e-6)},
        "valid": {"shards": 2, "samples": 4, "hours": pytest.approx(10 / 3600, abs=1e-6)},
    }
    names = [s["name"] for s in st["per_shard"]]
    assert {n.rpartition("/")[0] for n in names} == {"shards/train", "shards/valid"}
    # the mixture and the filters, repeated in each split's index.json, are counted once
    assert {m["task"]: m["built"] for m in st["mixture"]} == {"tts": 3, "instruct_tts": 1}
    assert st["filtered"] == [{"task": "tts", "reason": "min_snr_db", "samples": 5, "hours": 0.01}]
    assert stats["samples"]["count"] == 8
