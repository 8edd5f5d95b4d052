"""diarize and label-turns as steps on a build: the demo conversations end to end, accuracy
against their exact references, quarantine of bad input, reruns and crash recovery."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from minmo.demo.script import MEETINGS
from minmo.diarization.metrics import read_rttm, score
from minmo.duplex.evaluate import label_agreement
from minmo.duplex.labels import DuplexLabelConfig, Span
from pipelines.build import BuildDir
from pipelines.diarize import DiarizeConfig, run_diarize
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.run import read_table, run_ingest
from pipelines.label_turns import LabelTurnsConfig, run_label_turns
from schemas import EventType, FrameLabel

STEREO = ("en_weekend_hike", "de_umzug", "zh_zhoumo")
MONO = ("en_missing_parcel", "es_restaurante", "fr_vacances", "en_missing_parcel_far")


def _write_sources(demo: Path) -> Path:
    """The seven two-party demo conversations (one of them far-field) plus input no diarizer can use, all marked
    conversation. The demo's meetings are left out: this build diarizes with num_speakers = 2."""
    meetings = {f"conversations/{m.stem}.wav" for m in MEETINGS}
    rows: list[dict[str, Any]] = [
        json.loads(line)
        for line in (demo / "manifest.jsonl").read_text().splitlines()
        if '"conversation"' in line
    ]
    rows = [r for r in rows if r["path"] not in meetings]
    one_voice = next(
        json.loads(line)
        for line in (demo / "manifest.jsonl").read_text().splitlines()
        if '"asr"' in line
    )
    rows.append({**one_voice, "task": "conversation", "text": None})
    rng = np.random.default_rng(0)
    sf.write(
        demo / "room_tone.wav", (1e-4 * rng.standard_normal(16000 * 8)).astype("float32"), 16000
    )
    rows.append({"path": "room_tone.wav", "task": "conversation", "corpus": "minmo-demo"})
    manifest = demo / "conversations.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture(scope="module")
def built(ray_local, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed: apt-get install espeak-ng")
    from minmo.demo import build_demo_corpus

    root = tmp_path_factory.mktemp("diar")
    demo = root / "demo"
    build_demo_corpus(demo, seed=0, progress=False)
    build = str(root / "build")
    run_ingest(str(_write_sources(demo)), build, IngestConfig(files_per_unit=4), progress=False)
    diarize = run_diarize(build, DiarizeConfig(recordings_per_unit=3), progress=False)
    labels = run_label_turns(build, LabelTurnsConfig(recordings_per_unit=4), progress=False)
    return {"demo": demo, "build": build, "diarize": diarize, "labels": labels}


def _tables(build: str) -> dict[str, list[dict[str, Any]]]:
    b = BuildDir(build)
    names = ("recordings", "turns", "events", "frame_labels", "quarantine")
    return {name: read_table(b, name).to_pylist() for name in names}


def _by_stem(tables: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {Path(r["source_uri"]).stem: r for r in tables["recordings"]}


def _turns(tables: dict[str, list[dict[str, Any]]], rid: str) -> list[Span]:
    return [
        Span(t["speaker"], t["start_s"], t["end_s"])
        for t in tables["turns"]
        if t["recording_id"] == rid
    ]


def _reference(demo: Path, stem: str) -> list[Span]:
    (turns,) = read_rttm(demo / "conversations" / f"{stem}.rttm").values()
    return [Span(*t) for t in turns]


def test_backends_and_accuracy_on_the_demo(built: dict[str, Any]) -> None:
    tables = _tables(built["build"])
    recs = _by_stem(tables)
    for stem in STEREO + MONO:
        rid = recs[stem]["recording_id"]
        backends = {t["backend"] for t in tables["turns"] if t["recording_id"] == rid}
        assert backends == {"channels" if stem in STEREO else "offline"}, stem
        assert len({s.speaker for s in _turns(tables, rid)}) == 2, stem
    for stem in STEREO:
        der = score(_reference(built["demo"], stem), _turns(tables, recs[stem]["recording_id"]))
        assert der.der <= 0.03, (stem, der)
    pooled = [
        score(_reference(built["demo"], s), _turns(tables, recs[s]["recording_id"])) for s in MONO
    ]
    total = sum(p.total_s for p in pooled)
    errors = sum(p.missed_s + p.false_alarm_s + p.confusion_s for p in pooled)
    assert errors / total <= 0.15, pooled


def test_channel_turns_sit_on_their_channel_and_overlap_is_kept(built: dict[str, Any]) -> None:
    tables = _tables(built["build"])
    rid = _by_stem(tables)["en_weekend_hike"]["recording_id"]
    turns = [t for t in tables["turns"] if t["recording_id"] == rid]
    assert {(t["speaker"], t["channel"]) for t in turns} == {("ch0", 0), ("ch1", 1)}
    a = [t for t in turns if t["channel"] == 0]
    b = [t for t in turns if t["channel"] == 1]
    overlap = sum(
        max(0.0, min(x["end_s"], y["end_s"]) - max(x["start_s"], y["start_s"]))
        for x in a
        for y in b
    )
    assert overlap > 0.5  # the script has overlapping starts, an interruption, back-channels
    assert all(0.0 <= t["confidence"] <= 1.0 and t["end_s"] > t["start_s"] for t in turns)


def test_bad_conversations_are_quarantined_and_counted(built: dict[str, Any]) -> None:
    tables = _tables(built["build"])
    reasons = {
        Path(q["source_uri"]).name: q["reason_code"]
        for q in tables["quarantine"]
        if q["step"] == "diarize"
    }
    assert reasons.get("room_tone.wav") == "no_speech"
    assert sorted(reasons.values()) == ["no_speech", "single_speaker"]
    summary = built["diarize"].to_dict()
    assert summary["quarantined"] == {"no_speech": 1, "single_speaker": 1}
    assert summary["conversations"] == 7
    assert "quarantined: 2" in built["diarize"].render()


def _agreement(built: dict[str, Any], stems: tuple[str, ...]) -> Any:
    tables = _tables(built["build"])
    recs = _by_stem(tables)
    conversations = [
        (
            recs[s]["recording_id"],
            recs[s]["duration_s"],
            _turns(tables, recs[s]["recording_id"]),
            _reference(built["demo"], s),
        )
        for s in stems
    ]
    return label_agreement(conversations, DuplexLabelConfig())


def test_labels_from_diarized_turns_agree_with_reference_labels(built: dict[str, Any]) -> None:
    everything = _agreement(built, STEREO + MONO)
    for event_type in (EventType.ASSISTANT_TURN_TAKING, EventType.USER_TURN_TAKING):
        assert everything.f1(event_type, 5) >= 0.9, everything.render()
    # Back-channels overlap the other speaker. `channels` hears them on their own channel; the
    # mono `offline` backend gives one speaker per instant and cannot (see the README).
    stereo = _agreement(built, STEREO)
    assert stereo.f1(EventType.USER_BACKCHANNEL, 5) >= 0.9, stereo.render()
    assert stereo.backchannel_accuracy(5) >= 0.9


def test_events_and_frame_labels_tables(built: dict[str, Any]) -> None:
    tables = _tables(built["build"])
    assert len(tables["frame_labels"]) == 14  # two role assignments per conversation
    events: dict[str, list[dict[str, Any]]] = {}
    for e in tables["events"]:
        events.setdefault(e["sample_id"], []).append(e)
    for row in tables["frame_labels"]:
        labels = np.asarray(row["labels"])
        assert row["n_frames"] == len(labels) == math.ceil(row["duration_s"] / 0.12 - 1e-9)
        own = events[row["sample_id"]]
        speak = [e for e in own if e["event_type"] == "assistant_turn_taking"]
        stop = [e for e in own if e["event_type"] == "user_turn_taking"]
        assert len(speak) >= 2 and len(stop) >= 2
        for e in speak:
            assert labels[int(e["time_s"] / 0.12 + 1e-9)] == FrameLabel.SPEAK_NOW
        for e in stop:
            assert labels[int(e["time_s"] / 0.12 + 1e-9)] == FrameLabel.STOP_NOW
        assert (labels == FrameLabel.KEEP_SPEAKING).mean() > 0.2
    summary = built["labels"].to_dict()
    assert summary["samples"] == 14 and summary["conversations"] == 7
    assert summary["events"]["user_backchannel"] >= 5
    assert set(summary["gap_s_percentiles"]) == {"5", "25", "50", "75", "95"}


def test_rerun_does_nothing_and_changes_nothing(built: dict[str, Any]) -> None:
    before = _tables(built["build"])
    again = run_diarize(built["build"], DiarizeConfig(recordings_per_unit=3), progress=False)
    labels = run_label_turns(built["build"], LabelTurnsConfig(), progress=False)
    assert again.recordings_run == 0 and labels.recordings_run == 0
    assert _tables(built["build"]) == before


def test_a_unit_lost_in_a_crash_is_redone_once(built: dict[str, Any]) -> None:
    before = _tables(built["build"])
    b = BuildDir(built["build"])
    markers = b.files(b.path("_state", "diarize", "done"), ".json")
    lost = b.read_json(markers[0])["recording_ids"]
    b.delete(markers[0])  # as if the run died between moving the files and the marker
    again = run_diarize(built["build"], DiarizeConfig(recordings_per_unit=3), progress=False)
    assert again.recordings_run == len(lost)
    after = _tables(built["build"])

    def key(t: dict[str, Any]) -> tuple[Any, ...]:
        return (t["recording_id"], t["speaker"], t["start_s"])

    assert sorted(after["turns"], key=key) == sorted(before["turns"], key=key)
    assert len(after["quarantine"]) == len(before["quarantine"])


def test_channels_backend_refuses_mono_recordings(built: dict[str, Any], tmp_path: Path) -> None:
    build = tmp_path / "forced"
    _copy_ingest(built, build)
    summary = run_diarize(str(build), DiarizeConfig(backend="channels"), progress=False)
    quarantined = summary.to_dict()["quarantined"]
    # The four mono conversations, the mono single voice and the mono room tone.
    assert quarantined == {"not_multichannel": 6}
    assert summary.to_dict()["conversations"] == 3


def _copy_ingest(built: dict[str, Any], build: Path) -> None:
    source = Path(built["build"])
    for part in ("recordings", "segments", "quarantine"):
        shutil.copytree(source / part, build / part, ignore=shutil.ignore_patterns("*~*"))


@pytest.mark.slow
def test_auto_uses_pyannote_for_mono_when_a_model_is_given(
    built: dict[str, Any], tmp_path: Path
) -> None:
    """The tiny random-init pipeline diarizes nonsense; what is checked is the plumbing: the
    backend choice, and every conversation ending in turns or in quarantine."""
    from minmo.testing.pyannote_tiny import build_tiny_pyannote_pipeline

    model = build_tiny_pyannote_pipeline(tmp_path / "tiny-pipeline")
    build = tmp_path / "with-model"
    _copy_ingest(built, build)
    summary = run_diarize(
        str(build), DiarizeConfig(diarization_model=str(model)), progress=False
    ).to_dict()
    assert summary["backends"] == {"channels": 3, "pyannote": 6}
    assert summary["conversations"] + sum(summary["quarantined"].values()) == 9
    turns = read_table(BuildDir(str(build)), "turns").to_pylist()
    stems = {
        r["recording_id"]: Path(r["source_uri"]).stem for r in _tables(built["build"])["recordings"]
    }
    for t in turns:
        expected = "channels" if stems[t["recording_id"]] in STEREO else "pyannote"
        assert t["backend"] == expected
