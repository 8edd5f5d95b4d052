"""Relocatable builds: ids and shards do not depend on where the sources or the build live.

(a) The same corpus at two absolute paths, ingested into two builds: the same recording ids,
    and stage-1 shards byte-identical.
(b) Sources and build both moved, the old paths gone: a rerun with `--source-root OLD=NEW`
    redoes nothing (every ingest unit skipped, no shard written); shards rebuilt from scratch
    in the moved build read the audio from its new place and are byte-identical again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.compute as pc
import pytest

from minmo.cli import main as cli
from minmo.testing.tiny_models import build_tiny_checkpoint
from pipelines.audio_source import SourceRoots
from pipelines.build import BuildDir
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.run import read_table, run_ingest
from pipelines.shards.step import ShardsConfig, run_shards
from schemas.shards import index_path

pytestmark = pytest.mark.slow


def _corpus(root: Path, shared_data: Path) -> Path:
    """The transcribed spk1 clips and one undecodable file, under a directory named `corpus`."""
    root.mkdir(parents=True)
    for path in sorted((shared_data / "asr_speechbrain_en").glob("spk1_*.wav")):
        shutil.copy(path, root / path.name)
        (root / f"{path.stem}.txt").write_text(f"text of {path.stem}")
    (root / "broken.wav").write_bytes(b"not audio" * 20)
    return root


def _shard_digests(build: Path) -> dict[str, str]:
    """sha256 of every file under shards/ (tars, .idx, index.json), by relative path."""
    root = build / "shards"
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _shards(build: Path, tokenizer: Path) -> dict:
    config = ShardsConfig(stages=["stage1"], speech_tokenizer=str(tokenizer), max_samples=4)
    return run_shards(str(build), config, progress=False).stages[0]


@pytest.fixture(scope="module")
def two_builds(ray_local, shared_data, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("relocation")
    tokenizer = build_tiny_checkpoint(root / "s3tiny.pt")
    out = {"root": root, "tokenizer": tokenizer}
    for name in ("a", "b"):
        src = _corpus(root / name / "corpus", shared_data)
        build = root / name / "build"
        out[name] = {
            "src": src,
            "build": build,
            "ingest": run_ingest(str(src), str(build), IngestConfig(), progress=False),
            "shards": _shards(build, tokenizer),
        }
    return out


def test_the_same_corpus_at_two_paths_has_the_same_ids_and_shards(two_builds):
    a, b = two_builds["a"], two_builds["b"]
    recs = {k: read_table(BuildDir(str(v["build"])), "recordings") for k, v in (("a", a), ("b", b))}
    clips = sorted(p.name for p in b["src"].glob("spk1_*.wav"))
    assert recs["a"].num_rows == len(clips) > 1
    assert sorted(recs["a"].column("recording_id").to_pylist()) == sorted(
        recs["b"].column("recording_id").to_pylist()
    )
    assert sorted(recs["a"].column("source_key").to_pylist()) == [f"corpus:{c}" for c in clips]
    assert pc.all(pc.starts_with(recs["b"].column("source_uri"), str(b["src"]))).as_py()
    quarantined = read_table(BuildDir(str(b["build"])), "quarantine")
    assert quarantined.column("source_key").to_pylist() == ["corpus:broken.wav"]
    assert a["shards"]["totals"]["samples"] > 0
    digests = _shard_digests(a["build"])
    assert any(name.endswith(".tar") for name in digests)
    assert digests == _shard_digests(b["build"])


def test_moved_sources_and_build_redo_nothing_and_keep_their_shards(two_builds):
    a = two_builds["a"]
    reference = _shard_digests(a["build"])
    moved = two_builds["root"] / "moved"
    moved.mkdir()
    src, build = moved / "corpus", moved / "build"
    shutil.move(a["src"], src)  # the old paths no longer exist
    shutil.move(a["build"], build)

    code = cli(
        ["-q", "ingest", str(src), "--build", str(build), "--source-root", f"{a['src']}={src}"]
    )
    assert code == 0
    summary = BuildDir(str(build)).read_json(str(build / "_state" / "ingest" / "summary.json"))
    assert summary["units_run"] == 0 and summary["units_skipped"] == 1
    assert SourceRoots.load(BuildDir(str(build))).resolve(f"{a['src']}/x.wav") == f"{src}/x.wav"

    again = _shards(build, two_builds["tokenizer"])
    assert again["new_units"] == 0 and again["shards_written_now"] == 0
    assert _shard_digests(build) == reference

    # Rebuilt from scratch, the shards read every clip from its new place: the same bytes.
    shutil.rmtree(build / "shards")
    shutil.rmtree(build / "_state" / "shards")
    rebuilt = _shards(build, two_builds["tokenizer"])
    assert rebuilt["shards_written_now"] > 0 and sum(rebuilt["quarantined"].values()) == 0
    assert _shard_digests(build) == reference
    index = json.loads(Path(index_path(str(build / "shards" / "stage1"))).read_text())
    assert str(moved) not in json.dumps(index) and str(a["src"]) not in json.dumps(index)


def test_a_damaged_or_missing_index_stops_the_run_until_reindexed(two_builds, capsys):
    b = two_builds["b"]
    build, src = b["build"], str(b["src"])
    index = build / "_state" / "ingest" / "index"
    (pending,) = (index / "pending").glob("*.arrow")  # one unit, not yet folded
    before = read_table(BuildDir(str(build)), "recordings").num_rows

    pending.write_bytes(b"garbage")
    assert cli(["-q", "ingest", src, "--build", str(build)]) == 2
    err = capsys.readouterr().err
    assert str(pending) in err and "minmo ingest --reindex" in err

    assert cli(["-q", "ingest", "--reindex", "--build", str(build)]) == 0
    assert cli(["-q", "ingest", src, "--build", str(build)]) == 0
    assert "0 unit(s) run, 1 already committed" in capsys.readouterr().out

    shutil.rmtree(index)  # as if the build predated the index
    assert cli(["-q", "ingest", src, "--build", str(build)]) == 2
    assert "minmo ingest --reindex" in capsys.readouterr().err
    assert cli(["-q", "ingest", src, "--reindex", "--build", str(build)]) == 0
    assert "0 unit(s) run, 1 already committed" in capsys.readouterr().out
    assert read_table(BuildDir(str(build)), "recordings").num_rows == before
