"""Relocatable builds, stages 3-4: synthesized audio and dialogue ids do not depend on where the
dialogue files or the build live (issue 15 item 6; stage 1 is tests/pipelines/test_relocation.py).

(a) The same two dialogue lines (one with an `id`, one without) at two absolute paths,
    synthesized into two builds: the same dialogue and recording ids, and stage-3 shards
    byte-identical, with no absolute path in them.
(b) Dialogues and build both moved, the old paths gone, and NO `--source-root`: synthesize redoes
    nothing, and stage-3 shards rebuilt from scratch read the audio from the build's new place
    and are byte-identical again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from minmo.testing.tiny_models import build_tiny_checkpoint
from pipelines.build import BuildDir
from pipelines.ingest.run import read_table
from pipelines.shards.step import ShardsConfig, run_shards
from pipelines.synthesize import SynthesizeConfig, run_synthesize

pytestmark = pytest.mark.slow

DEMO_DIALOGUES = Path(__file__).resolve().parents[2] / "jobs" / "data" / "demo_dialogues.jsonl"


def _dialogues(directory: Path) -> Path:
    """The first two bundled dialogues; the second without its `id` (so its id is hashed)."""
    first, second = (json.loads(line) for line in DEMO_DIALOGUES.read_text().splitlines()[:2])
    second.pop("id")
    directory.mkdir(parents=True)
    path = directory / "chats.jsonl"
    path.write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n", encoding="utf-8")
    return path


def _synthesize(dialogues: Path, build: Path):
    config = SynthesizeConfig(dialogues=[str(dialogues)], duplex=False)
    return run_synthesize(str(build), config, progress=False)


def _shards(build: Path, tokenizer: Path) -> dict:
    config = ShardsConfig(stages=["stage3"], speech_tokenizer=str(tokenizer), max_samples=2)
    return run_shards(str(build), config, progress=False).stages[0]


def _digests(build: Path) -> dict[str, str]:
    root = build / "shards"
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _ids(build: Path) -> dict[str, list[str]]:
    b = BuildDir(str(build))
    return {
        "dialogues": sorted(set(read_table(b, "dialogues").column("dialogue_id").to_pylist())),
        "recordings": sorted(read_table(b, "recordings").column("recording_id").to_pylist()),
    }


@pytest.fixture(scope="module")
def two_builds(ray_local, tmp_path_factory) -> dict:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed: apt-get install espeak-ng")
    root = tmp_path_factory.mktemp("relocation_synth")
    tokenizer = build_tiny_checkpoint(root / "s3tiny.pt")
    out = {"root": root, "tokenizer": tokenizer}
    for name, depth in (("a", "x"), ("b", "y/z")):  # different absolute paths, same names
        dialogues = _dialogues(root / name / depth / "chats")
        build = root / name / "build"
        out[name] = {
            "dialogues": dialogues,
            "build": build,
            "synth": _synthesize(dialogues, build),
            "shards": _shards(build, tokenizer),
        }
    return out


def test_the_same_dialogues_at_two_paths_have_the_same_ids_and_shards(two_builds):
    a, b = two_builds["a"], two_builds["b"]
    assert a["synth"].totals.quarantined == {} and a["synth"].items_run == 2
    ids = _ids(a["build"])
    assert len(ids["dialogues"]) == 2 and "demo-weather" in ids["dialogues"]
    assert ids == _ids(b["build"])
    recordings = read_table(BuildDir(str(b["build"])), "recordings").to_pylist()
    assert all(r["source_key"].startswith("build:audio/synth/") for r in recordings)
    assert all(r["source_uri"] == r["source_key"] for r in recordings)

    assert a["shards"]["totals"]["samples"] > 0
    digests = _digests(a["build"])
    assert any(name.endswith(".tar") for name in digests)
    assert digests == _digests(b["build"])
    # Provenance names keys: neither the build's nor the dialogues' place is in any shard byte
    # (the tokenizer checkpoint's path is, as given: the same file for both builds).
    places = (str(b["build"]).encode(), str(b["dialogues"].parent).encode())
    for path in (b["build"] / "shards").rglob("*"):
        if path.is_file():
            assert not any(place in path.read_bytes() for place in places), path


def test_moved_dialogues_and_build_redo_nothing_and_keep_their_shards(two_builds):
    a = two_builds["a"]
    reference, ids = _digests(a["build"]), _ids(a["build"])
    moved = two_builds["root"] / "moved"
    moved.mkdir()
    dialogues, build = moved / "elsewhere" / "chats.jsonl", moved / "build"
    dialogues.parent.mkdir()
    shutil.move(a["dialogues"], dialogues)  # the old paths no longer exist
    shutil.move(a["build"], build)

    assert _synthesize(dialogues, build).items_run == 0
    again = _shards(build, two_builds["tokenizer"])
    assert again["new_units"] == 0 and again["shards_written_now"] == 0
    assert _digests(build) == reference and _ids(build) == ids

    # Rebuilt from scratch, the shards read the synthesized audio from the build's new place.
    shutil.rmtree(build / "shards")
    shutil.rmtree(build / "_state" / "shards")
    rebuilt = _shards(build, two_builds["tokenizer"])
    assert rebuilt["shards_written_now"] > 0 and sum(rebuilt["quarantined"].values()) == 0
    assert _digests(build) == reference
