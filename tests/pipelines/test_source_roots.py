"""Source keys and `--source-root` moves, without Ray: what identifies a listed file, and where a
moved source is read from."""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines.audio_source import SourceRoots
from pipelines.build import BuildDir
from pipelines.ingest.items import SourceItem
from pipelines.ingest.sources import list_sources


def test_parse_rejects_what_is_not_old_equals_new():
    for bad in ("/a", "=/b", "/a="):
        with pytest.raises(ValueError, match="OLD=NEW"):
            SourceRoots.parse([bad])


def test_the_longest_moved_prefix_wins_and_only_whole_path_components_match():
    roots = SourceRoots.parse(["/data=/mnt/data", "/data/big=s3://bucket/big/"])
    assert roots.resolve("/data/x.wav") == "/mnt/data/x.wav"
    assert roots.resolve("/data/big/y.flac") == "s3://bucket/big/y.flac"
    assert roots.resolve("/database/z.wav") == "/database/z.wav"
    assert roots.unresolve("s3://bucket/big/y.flac") == "/data/big/y.flac"
    assert roots.unresolve("/elsewhere/y.flac") == "/elsewhere/y.flac"


def test_moves_are_recorded_once_in_the_build_and_merged(tmp_path):
    build = BuildDir(str(tmp_path / "b"))
    assert SourceRoots.load(build) == SourceRoots()
    SourceRoots.parse(["/a=/b"]).record(build)
    SourceRoots.parse(["/c=/d", "/a=/e"]).record(build)
    assert SourceRoots.load(build).resolve("/a/1.wav") == "/e/1.wav"
    assert SourceRoots.load(build).resolve("/c/1.wav") == "/d/1.wav"


def _keys(src: str, **kwargs) -> list[str]:
    return sorted(
        e.key if isinstance(e, SourceItem) else e["source_key"] for e in list_sources(src, **kwargs)
    )


def test_keys_are_relative_to_the_listed_root_wherever_it_is_mounted(tmp_path, shared_data):
    clip = sorted((shared_data / "asr_speechbrain_en").glob("*.wav"))[0]
    keys = []
    for where in ("one", "two/deeper"):
        corpus = tmp_path / where / "corpus"
        (corpus / "sub").mkdir(parents=True)
        shutil.copy(clip, corpus / "sub" / "a.wav")
        (corpus / "sub" / "broken.wav").write_bytes(b"")
        keys.append(_keys(str(corpus)))
    assert keys[0] == keys[1] == ["corpus:sub/a.wav", "corpus:sub/broken.wav"]


def test_a_manifest_target_outside_its_root_keeps_its_key_through_a_recorded_move(
    tmp_path, shared_data
):
    clip = sorted((shared_data / "asr_speechbrain_en").glob("*.wav"))[0]
    old, new = tmp_path / "old_disk", tmp_path / "new_disk"
    old.mkdir()
    shutil.copy(clip, old / "x.wav")
    manifest_dir = tmp_path / "lists"
    manifest_dir.mkdir()
    manifest = manifest_dir / "m.jsonl"
    manifest.write_text(json.dumps({"path": str(old / "x.wav"), "text": "hi"}) + "\n")
    before = _keys(str(manifest))
    assert before == [f"lists:{old}/x.wav"]  # outside the manifest's folder: the whole URI

    shutil.move(old, new)
    manifest.write_text(json.dumps({"path": str(new / "x.wav"), "text": "hi"}) + "\n")
    assert _keys(str(manifest)) != before  # without the move recorded, a new source
    roots = SourceRoots.parse([f"{old}={new}"])
    assert _keys(str(manifest), original_uri=roots.unresolve) == before
