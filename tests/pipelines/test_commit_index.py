"""The ingest commit index without Ray: probes across folds and splits, crash leftovers, a
damaged index (missing or corrupt part, a build that predates the index), reindex, S3."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pipelines.build import BuildDir, StepLedger
from pipelines.ingest import commit_index
from pipelines.ingest.commit import mark_duplicates
from pipelines.ingest.commit_index import CommitIndex, CommitIndexError, index_dir, reindex
from schemas import QUARANTINE, RECORDINGS


def _ledger(build: BuildDir) -> StepLedger:
    return StepLedger(build, "ingest", ("recordings", "segments", "quarantine"))


def _recording(rid: str, key: str, sha: str, dup_of: str | None = None) -> dict:
    return {
        "recording_id": rid,
        "source_uri": f"/old/{key}",
        "source_key": f"c:{key}",
        "corpus": "c",
        "container": "wav",
        "sample_rate_hz": 16000,
        "source_channels": 1,
        "channels": 1,
        "duration_s": 1.0,
        "bytes": 10,
        "content_sha1": sha,
        "peak_dbfs": -3.0,
        "rms_dbfs": -20.0,
        "clipping_ratio": 0.0,
        "speech_ratio": 0.5,
        "dup_of": dup_of,
    }


def _commit(build: BuildDir, index: CommitIndex, unit: str, rows: list[dict], rejects=()) -> None:
    """Commit a unit the way the ingest does: parts, index rows, then the marker."""
    ledger = _ledger(build)
    staging = ledger.staging_dir(unit)
    build.fs.create_dir(f"{staging}/recordings", recursive=True)
    with build.fs.open_output_stream(f"{staging}/recordings/a.parquet") as out:
        pq.write_table(RECORDINGS.from_rows(rows), out)
    order = {r["source_uri"]: i for i, r in enumerate(rows)}
    dups, originals = mark_duplicates(build, index, f"{staging}/recordings", order)
    if rejects:
        build.fs.create_dir(f"{staging}/quarantine", recursive=True)
        with build.fs.open_output_stream(f"{staging}/quarantine/a.parquet") as out:
            pq.write_table(QUARANTINE.from_rows(list(rejects)), out)
    keys = [r["source_key"] for r in rows] + [q["source_key"] for q in rejects]
    index.add(unit, keys, originals)
    ledger.commit(unit, {"duplicates": dups})
    index.maybe_fold()


def _reject(key: str) -> dict:
    return {
        "source_uri": f"/old/{key}",
        "step": "ingest",
        "reason_code": "undecodable",
        "source_key": f"c:{key}",
    }


def _build_units(build: BuildDir, n_units: int, per_unit: int = 5) -> CommitIndex:
    index = CommitIndex.open(build, _ledger(build))
    for u in range(n_units):
        rows = [
            # every third content repeats an earlier unit's: a duplicate across units
            _recording(
                f"r{u}-{i}",
                f"{u}/{i}.wav",
                f"sha{(u * per_unit + i) % 7 if i % 3 == 0 else f'{u}-{i}'}",
            )
            for i in range(per_unit)
        ]
        _commit(build, index, f"unit{u:04d}", rows, rejects=[_reject(f"{u}/bad.wav")])
    return index


def _committed_recordings(build: BuildDir) -> list[dict]:
    files = build.files(build.table_dir("recordings"), ".parquet")
    return [r for f in files for r in pq.read_table(f, filesystem=build.fs).to_pylist()]


@pytest.mark.parametrize("fold_units", [1, 3, 1000])
def test_probe_answers_the_same_whether_rows_are_pending_or_folded(
    tmp_path, monkeypatch, fold_units
):
    monkeypatch.setattr(commit_index, "FOLD_UNITS", fold_units)
    build = BuildDir(str(tmp_path / "b"))
    index = _build_units(build, 7)
    reopened = CommitIndex.open(build, _ledger(build))
    recs = _committed_recordings(build)
    originals = {r["content_sha1"]: r["recording_id"] for r in recs if r["dup_of"] is None}
    assert len(originals) < len(recs), "the fixture holds duplicates"
    for probe in (index, reopened):
        assert probe.sources_seen(["c:3/1.wav", "c:3/bad.wav", "c:9/1.wav"]) == {
            "c:3/1.wav",
            "c:3/bad.wav",
        }
        assert probe.originals(list(originals) + ["nope"]) == originals
    # the listing-order rule: a duplicate points at the first committed original
    for r in recs:
        if r["dup_of"]:
            assert r["dup_of"] == originals[r["content_sha1"]] != r["recording_id"]


def test_a_split_keeps_every_answer(tmp_path, monkeypatch):
    monkeypatch.setattr(commit_index, "FOLD_UNITS", 2)
    monkeypatch.setattr(commit_index, "MAX_BUCKET_ROWS", 0.05)
    build = BuildDir(str(tmp_path / "b"))
    index = _build_units(build, 6)
    assert index.manifest["prefix_chars"] > commit_index.PREFIX_CHARS
    names = {p.rsplit("/", 1)[-1].split("-")[0] for p in build.files(f"{index_dir(build)}/buckets")}
    assert {len(n) for n in names} == {index.manifest["prefix_chars"]}, "old buckets deleted"
    assert index.sources_seen([f"c:{u}/{i}.wav" for u in range(6) for i in range(5)]) == {
        f"c:{u}/{i}.wav" for u in range(6) for i in range(5)
    }


def test_pending_rows_of_a_unit_without_marker_are_dropped(tmp_path):
    build = BuildDir(str(tmp_path / "b"))
    index = CommitIndex.open(build, _ledger(build))
    index.add("crashed", ["c:x.wav"], {"shaX": "rx"})  # a crash before the marker
    reopened = CommitIndex.open(build, _ledger(build))
    assert reopened.sources_seen(["c:x.wav"]) == set()
    assert not build.files(f"{index_dir(build)}/pending")


def _bucket_bytes(build: BuildDir) -> dict[str, bytes]:
    """{bucket: file bytes}, whatever generation each bucket is at."""
    out = {}
    for path in build.files(f"{index_dir(build)}/buckets"):
        with build.fs.open_input_stream(path) as f:
            out[path.rsplit("/", 1)[-1].split("-")[0]] = f.read()
    return out


def _bucket_of_source(build: BuildDir, key: str) -> str:
    """The bucket file that holds a source key."""
    index = CommitIndex.open(build, _ledger(build))
    bucket = index.bucket_of(commit_index.digest(commit_index.SOURCE, key))
    return index.bucket_path(bucket, index.manifest["buckets"][bucket])


def test_missing_or_corrupt_part_stops_with_the_file_and_the_rebuild_command(tmp_path):
    build = BuildDir(str(tmp_path / "b"))
    _build_units(build, 4).fold()
    keys = [f"c:{u}/{i}.wav" for u in range(4) for i in range(5)]
    path = _bucket_of_source(build, keys[0])

    with open(path, "wb") as f:
        f.write(b"not arrow at all")
    with pytest.raises(CommitIndexError, match="unreadable") as err:
        CommitIndex.open(build, _ledger(build)).sources_seen(keys)
    assert path in str(err.value) and "minmo ingest --reindex" in str(err.value)

    build.delete(path)
    with pytest.raises(CommitIndexError, match="missing") as err:
        CommitIndex.open(build, _ledger(build)).sources_seen(keys)
    assert path in str(err.value) and "minmo ingest --reindex" in str(err.value)

    reindex(build, _ledger(build))
    assert CommitIndex.open(build, _ledger(build)).sources_seen(keys) == set(keys)


def test_a_build_without_index_must_be_reindexed_and_reindex_equals_the_incremental_index(
    tmp_path,
):
    build = BuildDir(str(tmp_path / "b"))
    incremental = _build_units(build, 5)
    incremental.fold()
    before = build.read_json(f"{index_dir(build)}/manifest.json")
    snapshot = _bucket_bytes(build)
    build.delete(index_dir(build))
    with pytest.raises(CommitIndexError, match="--reindex"):
        CommitIndex.open(build, _ledger(build))
    counts = reindex(build, _ledger(build))
    after = build.read_json(f"{index_dir(build)}/manifest.json")
    assert counts["rows"] == before["rows"] == after["rows"]
    rebuilt = _bucket_bytes(build)
    assert rebuilt == snapshot


def test_index_on_s3(moto_s3_options, monkeypatch):
    import pyarrow.fs as pafs

    monkeypatch.setattr(commit_index, "FOLD_UNITS", 2)
    pafs.S3FileSystem(**moto_s3_options, allow_bucket_creation=True).create_dir("idx")
    build = BuildDir("s3://idx/build", **moto_s3_options)
    _build_units(build, 3)
    index = CommitIndex.open(build, _ledger(build))
    assert len(index.pending) == 1  # units 0 and 1 folded, unit 2 pending
    assert index.sources_seen(["c:0/0.wav", "c:2/4.wav", "c:5/0.wav"]) == {"c:0/0.wav", "c:2/4.wav"}
    build.delete(_bucket_of_source(build, "c:0/0.wav"))
    with pytest.raises(CommitIndexError, match="missing"):
        index.sources_seen([f"c:{u}/{i}.wav" for u in range(3) for i in range(5)])
