"""Stage-1 tasks from real label columns, label_source (human / model / human_then_model),
quality filters, and reading builds of older table versions.

A tiny build is written with the tables' contracts (recordings, segments, annotations part files
named as ingest and `annotate` name theirs) over a few real WAV files, so that the builders run
without a corpus and one test takes it through the shards step and reads the samples back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import webdataset as wds

from pipelines.build import BuildDir
from pipelines.samples import sources
from pipelines.samples.builders import SampleConfig, StageBuilder, age_answer
from pipelines.samples.filters import (
    NOISE_IS_THE_LABEL,
    REASONS,
    QualityFilters,
    cer,
    edit_distance,
)
from pipelines.samples.spec import span_s
from schemas import ANNOTATIONS, RECORDINGS, SEGMENTS, segment_id
from schemas.labels import LABEL_NAMES

RATE = 16000
SECONDS = 3.0
CANOE = "the birch canoe slid on the smooth planks"
LONG = "this transcript is far too long for one second of audio at all really"

# recording name -> (corpus, speaker, snr_db, clipping_ratio, speech_ratio, whole-file labels)
RECORDINGS_IN = {
    "a": ("ravdess", "spk1", 30.0, 0.0, 0.8, {"gender": "female", "age": 34}),
    "b": ("noisy", None, 5.0, 0.05, 0.2, {}),
    "c": ("raw", None, None, 0.0, 0.7, {}),  # SNR unmeasured: passes min_snr_db
    "d": ("read", "spk9", 25.0, 0.0, 0.9, {}),
}
# segment name -> (recording, start, end, text, language, labels)
SEGMENTS_IN = {
    "a1": (
        "a",
        0.0,
        2.0,
        CANOE,
        "en",
        {
            "speaker": "spk1",
            "emotion": "happy",
            "gender": "female",
            "age": 34,
            "audio_events": ["laughter"],
            "translations": [{"language": "de", "text": "Das Birkenkanu glitt."}],
        },
    ),
    "b1": ("b", 0.0, 2.5, "hello world", "en", {}),
    "c1": ("c", 0.5, 2.5, None, None, {}),  # unlabelled: only the model knows
    "d1": ("d", 1.0, 2.0, LONG, "en", {"speaker": "spk9", "age": 8}),
}
# segment name -> the model's labels
ANNOTATIONS_IN = {
    "a1": ("The birch canoe slid on the smooth planks.", "en", "sad", ["music"]),
    "b1": ("something else entirely different", "fr", None, []),
    "c1": ("model words here today", "de", "angry", ["applause"]),
}
MODEL = {"model": "SenseVoiceSmall", "model_version": "v0123"}


def _rid(name: str) -> str:
    return f"rec{name}"


def _sid(name: str) -> str:
    rec, start, end = SEGMENTS_IN[name][:3]
    return segment_id(_rid(rec), 0, start, end)


def _recording_rows(root: Path) -> list[dict[str, Any]]:
    rows = []
    rng = np.random.default_rng(0)
    for name, (corpus, speaker, snr, clip, speech, labels) in RECORDINGS_IN.items():
        path = root / "audio" / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(SECONDS * RATE)) / RATE
        audio = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(path, audio.astype("float32"), RATE)
        rows.append(
            {
                "recording_id": _rid(name),
                "source_uri": str(path),
                "source_key": f"{corpus}:{name}.wav",
                "corpus": corpus,
                "container": "wav",
                "sample_rate_hz": RATE,
                "source_channels": 1,
                "channels": 1,
                "bits": 16,
                "duration_s": SECONDS,
                "bytes": path.stat().st_size,
                "content_sha1": name * 40,
                "peak_dbfs": -10.0,
                "rms_dbfs": -20.0,
                "clipping_ratio": clip,
                "speech_ratio": speech,
                "snr_db": snr,
                "speaker": speaker,
                **labels,
            }
        )
    return rows


def _segment_rows() -> list[dict[str, Any]]:
    rows = []
    for name, (rec, start, end, text, lang, labels) in SEGMENTS_IN.items():
        rows.append(
            {
                "segment_id": _sid(name),
                "recording_id": _rid(rec),
                "channel": 0,
                "start_s": start,
                "end_s": end,
                "duration_s": end - start,
                "speech_prob": 0.9,
                "origin": "supervision" if text else "vad",
                "text": text,
                "language": lang,
                **labels,
            }
        )
    return rows


def _annotation_rows() -> list[dict[str, Any]]:
    rows = []
    for name, (text, lang, emotion, events) in ANNOTATIONS_IN.items():
        rows.append(
            {
                "segment_id": _sid(name),
                "recording_id": _rid(SEGMENTS_IN[name][0]),
                **MODEL,
                "transcript": text,
                "transcript_confidence": 0.9,
                "language": lang,
                "language_confidence": 0.8,
                "emotion": emotion,
                "emotion_confidence": 0.7 if emotion else None,
                "audio_events": events or None,
                "audio_events_confidence": 0.6 if events else None,
            }
        )
    return rows


def _write(build: Path, table: str, name: str, data: pa.Table) -> None:
    (build / table).mkdir(parents=True, exist_ok=True)
    pq.write_table(data, build / table / name)


def write_build(root: Path, annotations: bool = True) -> Path:
    """recordings + segments as ingest unit `u1` writes them, annotations as `annotate` does."""
    build = root / "build"
    _write(build, "recordings", "u1_0000.parquet", RECORDINGS.from_rows(_recording_rows(root)))
    _write(build, "segments", "u1_0000.parquet", SEGMENTS.from_rows(_segment_rows()))
    if annotations:
        name = "annotate~ingest.u1_0000.parquet"
        _write(build, "annotations", name, ANNOTATIONS.from_rows(_annotation_rows()))
    return build


@pytest.fixture
def build(tmp_path: Path) -> Path:
    return write_build(tmp_path)


def _specs(build: Path, stage: str = "stage1", **config: Any) -> tuple[list[dict], StageBuilder]:
    builder = StageBuilder(BuildDir(str(build)), SampleConfig(**config))
    return list(builder.specs(stage)), builder


def _by(specs: list[dict], task: str, **meta: Any) -> dict[str, dict]:
    """segment name -> the one `task` spec over it (with these meta values)."""
    names = {_sid(n): n for n in SEGMENTS_IN}
    out: dict[str, dict] = {}
    for s in specs:
        if s["task"] != task or any(s["meta"].get(k) != v for k, v in meta.items()):
            continue
        name = names.get(s["meta"].get("segment_id"), s["meta"].get("recording_id"))
        assert name not in out, f"two {task} specs for {name}"
        out[name] = s
    return out


def _answer(spec: dict) -> str:
    return spec["messages"][-1]["content"]


# ---- reading any version --------------------------------------------------------------------


def test_a_v1_build_and_a_mixed_build_read_with_the_label_columns_null(tmp_path: Path) -> None:
    root = tmp_path
    build = root / "build"
    labels = set(LABEL_NAMES)
    # recordings v2 and segments v1: the same rows without the label columns
    old_recs = RECORDINGS.from_rows(_recording_rows(root)).drop_columns(list(labels))
    old_segs = SEGMENTS.from_rows(_segment_rows()[:2]).drop_columns(list(labels))
    _write(build, "recordings", "u1_0000.parquet", old_recs)
    _write(build, "segments", "u1_0000.parquet", old_segs)
    bd = BuildDir(str(build))
    rows = list(sources.iter_rows(bd, "segments", ["segment_id", "text", *LABEL_NAMES]))
    assert [r["segment_id"] for r in rows] == [_sid("a1"), _sid("b1")]
    assert all(r[name] is None for r in rows for name in LABEL_NAMES)
    assert sources.read_table(bd, "segments", ["emotion"]).column("emotion").null_count == 2
    assert sources.recordings(bd)[_rid("a")].gender is None

    specs, _ = _specs(build)
    assert {s["task"] for s in specs} == {"asr", "contextual_asr", "language_id"}

    # a later unit writes v2 segments beside the v1 ones: both read, neither loses a column
    _write(build, "segments", "u2_0000.parquet", SEGMENTS.from_rows(_segment_rows()[2:]))
    rows = {r["segment_id"]: r for r in sources.iter_rows(bd, "segments", None)}
    assert len(rows) == 4 and rows[_sid("a1")]["emotion"] is None
    assert rows[_sid("d1")]["age"] == 8 and rows[_sid("d1")]["speaker"] == "spk9"


# ---- stage-1 tasks from the label columns ----------------------------------------------------


def test_emotion_comes_from_the_segments_emotion_column(build: Path) -> None:
    specs, _ = _specs(build)
    emotion = _by(specs, "emotion")
    assert set(emotion) == {"a1"}
    assert _answer(emotion["a1"]) == "happy"
    assert emotion["a1"]["meta"]["label_source"] == "human"
    assert emotion["a1"]["messages"][0]["content"].endswith("<|endofspeech|>")


def test_speaker_analysis_asks_gender_and_age_of_labelled_segments(build: Path) -> None:
    specs, _ = _specs(build)
    gender = _by(specs, "speaker_analysis", question="gender")
    age = _by(specs, "speaker_analysis", question="age")
    assert set(gender) == {"a1"} and _answer(gender["a1"]) == "female"
    assert set(age) == {"a1", "d1"}
    assert _answer(age["a1"]) == "about 34 years old, in their thirties"
    assert _answer(age["d1"]) == "a child, about 8 years old"
    assert gender["a1"]["key"] != age["a1"]["key"]
    # the split key: the speaker, qualified by its corpus
    assert gender["a1"]["meta"]["speaker"] == "ravdess:spk1"
    assert age["d1"]["meta"]["speaker"] == "read:spk9"
    prompts = {
        "speaker_analysis.gender": gender["a1"]["messages"][0]["content"],
        "speaker_analysis.age": age["a1"]["messages"][0]["content"],
    }
    book = StageBuilder(BuildDir(str(build)), SampleConfig()).book
    for kind, prompt in prompts.items():
        assert prompt.split("\n")[0] in book.templates[kind]


def test_age_answers_name_the_decade() -> None:
    assert age_answer(25) == "about 25 years old, in their twenties"
    assert age_answer(15) == "about 15 years old, in their teens"
    assert age_answer(101) == "about 101 years old"


def test_audio_event_from_the_column_and_from_the_side_input(build: Path, tmp_path: Path) -> None:
    side = tmp_path / "events.jsonl"
    side.write_text(json.dumps({"source_uri": "audio/b.wav", "events": ["Beep", "noise"]}) + "\n")
    specs, _ = _specs(build, audio_events=str(side))
    events = _by(specs, "audio_event")
    assert set(events) == {"a1", _rid("b")}
    assert _answer(events["a1"]) == "laughter"
    assert events["a1"]["input_audio"]["end_s"] == 2.0  # the segment, not the recording
    whole = events[_rid("b")]
    assert _answer(whole) == "Beep, noise" and span_s(whole["input_audio"]) == SECONDS
    assert "segment_id" not in whole["meta"] and whole["meta"]["label_source"] == "human"


def test_speech_translation_from_inline_translations(build: Path, tmp_path: Path) -> None:
    side = tmp_path / "translations.jsonl"
    lines = [
        {"language": "en", "text": CANOE, "target_language": "de", "translation": "side de"},
        {"language": "en", "text": CANOE, "target_language": "fr", "translation": "Le canoë."},
    ]
    side.write_text("".join(json.dumps(line) + "\n" for line in lines))
    specs, _ = _specs(build, translations=[str(side)])
    st = [s for s in specs if s["task"] == "speech_translation"]
    by_target = {s["meta"]["target_language"]: s for s in st}
    assert sorted(by_target) == ["de", "fr"] and len(st) == 2
    assert _answer(by_target["de"]) == "Das Birkenkanu glitt."  # inline wins over the side file
    assert "German" in by_target["de"]["messages"][0]["content"]
    assert _answer(by_target["fr"]) == "Le canoë."
    assert len({s["key"] for s in st}) == 2


# ---- label_source ---------------------------------------------------------------------------

MODEL_TASKS = {"asr": 0, "language_id": 0, "emotion": 0, "audio_event": 0}


def test_label_source_human_reads_only_the_corpus_labels(build: Path) -> None:
    specs, builder = _specs(build)
    assert set(_by(specs, "asr")) == {"a1", "b1", "d1"}
    assert _answer(_by(specs, "asr")["a1"]) == CANOE
    assert all(s["meta"]["label_source"] == "human" for s in specs)
    assert not any("label_model" in s["meta"] for s in specs)
    assert not any(k.endswith("label") for k in builder.counts.skipped)


def test_label_source_model_reads_the_annotations(build: Path) -> None:
    specs, builder = _specs(build, label_source={t: "model" for t in MODEL_TASKS})
    asr = _by(specs, "asr")
    assert set(asr) == {"a1", "b1", "c1"}  # d1 has no pseudo-label
    assert _answer(asr["a1"]) == "The birch canoe slid on the smooth planks."
    assert _answer(asr["c1"]) == "model words here today" and asr["c1"]["language"] == "de"
    meta = asr["c1"]["meta"]
    assert meta["label_source"] == "model" and meta["label_model"] == "SenseVoiceSmall"
    assert meta["label_model_version"] == "v0123" and meta["label_confidence"] == 0.9
    assert {n: _answer(s) for n, s in _by(specs, "emotion").items()} == {
        "a1": "sad",
        "c1": "angry",
    }
    assert _answer(_by(specs, "language_id")["b1"]) == "French"
    assert {n: _answer(s) for n, s in _by(specs, "audio_event").items()} == {
        "a1": "music",
        "c1": "applause",
    }
    skipped = builder.counts.skipped
    assert skipped["asr: no model label"] == 1  # d1
    assert skipped["emotion: no model label"] == 2  # b1 (the model said nothing), d1
    # the human-labelled tasks still build from the corpus
    assert _answer(_by(specs, "speaker_analysis", question="gender")["a1"]) == "female"


def test_human_then_model_never_overwrites_a_human_label(build: Path) -> None:
    specs, builder = _specs(build, label_source={t: "human_then_model" for t in MODEL_TASKS})
    emotion = _by(specs, "emotion")
    assert _answer(emotion["a1"]) == "happy" and emotion["a1"]["meta"]["label_source"] == "human"
    assert _answer(emotion["c1"]) == "angry" and emotion["c1"]["meta"]["label_source"] == "model"
    asr = _by(specs, "asr")
    assert set(asr) == {"a1", "b1", "c1", "d1"}
    assert _answer(asr["b1"]) == "hello world" and asr["b1"]["meta"]["label_source"] == "human"
    assert asr["c1"]["meta"]["label_source"] == "model"
    assert builder.counts.skipped["emotion: no human_then_model label"] == 2  # b1, d1
    # the key of a sample does not depend on which source answered it
    human, _ = _specs(build)
    assert _by(human, "asr")["b1"]["key"] == asr["b1"]["key"]


def test_model_labels_of_a_unit_without_annotations_build_nothing(tmp_path: Path) -> None:
    build = write_build(tmp_path, annotations=False)
    specs, builder = _specs(build, label_source={"asr": "model"})
    assert _by(specs, "asr") == {}
    assert builder.counts.skipped["asr: no model label"] == 4


def test_an_unknown_label_source_is_refused(build: Path) -> None:
    with pytest.raises(ValueError, match="robot"):
        StageBuilder(BuildDir(str(build)), SampleConfig(label_source={"asr": "robot"}))


# ---- quality filters ------------------------------------------------------------------------


NOISE_FILTERS = ("min_snr_db", "min_speech_ratio")


@pytest.mark.parametrize(
    "filters, reason, removed",
    [
        ({"min_snr_db": 10}, "min_snr_db", {"b"}),
        ({"max_clipping_ratio": 0.01}, "max_clipping_ratio", {"b"}),
        ({"min_speech_ratio": 0.3}, "min_speech_ratio", {"b"}),
        ({"chars_per_second": [2, 25]}, "chars_per_second", {"d1"}),
        ({"max_cer_vs_model": 0.3}, "max_cer_vs_model", {"b1"}),
        ({"language_must_match_model": True}, "language_must_match_model", {"b1"}),
    ],
)
def test_each_filter_removes_what_it_should_and_counts_samples_and_seconds(
    build: Path, tmp_path: Path, filters: dict, reason: str, removed: set[str]
) -> None:
    side = tmp_path / "events.jsonl"
    side.write_text(json.dumps({"source_uri": "audio/b.wav", "events": ["beep"]}) + "\n")
    base = {"audio_events": str(side)}
    every, _ = _specs(build, **base)
    kept, builder = _specs(build, **base, filters=filters)

    def gone(spec: dict) -> bool:
        """A segment's sample goes with its segment or its recording; a whole-recording
        sample (no segment_id) only with its recording."""
        if spec["task"] in NOISE_IS_THE_LABEL and reason in NOISE_FILTERS:
            return False  # the event is the noise: SNR and speech ratio do not apply
        meta = spec["meta"]
        names = {n for n in SEGMENTS_IN if _sid(n) == meta.get("segment_id")}
        names |= {n for n in RECORDINGS_IN if _rid(n) == meta.get("recording_id")}
        return bool(names & removed)

    expected = [s for s in every if not gone(s)]
    assert [s["key"] for s in kept] == [s["key"] for s in expected]
    dropped = [s for s in every if gone(s)]
    assert dropped, "the filter must remove something here"
    want_n: dict[str, int] = {}
    want_s: dict[str, float] = {}
    for s in dropped:
        key = f"{s['task']}: {reason}"
        want_n[key] = want_n.get(key, 0) + 1
        want_s[key] = want_s.get(key, 0.0) + span_s(s["input_audio"])
    assert dict(builder.counts.filtered) == want_n
    assert dict(builder.counts.filtered_s) == pytest.approx(want_s)
    if removed == {"b"} and reason in NOISE_FILTERS:  # b's audio event is kept
        assert f"audio_event: {reason}" not in builder.counts.filtered
        assert any(
            s["task"] == "audio_event" and s["meta"]["recording_id"] == _rid("b") for s in kept
        )
    elif removed == {"b"}:  # the side-input audio event over all of b goes too
        assert builder.counts.filtered_s[f"audio_event: {reason}"] == pytest.approx(SECONDS)
    else:  # a segment's filter leaves the whole-recording sample alone
        assert any(s["task"] == "audio_event" and "segment_id" not in s["meta"] for s in kept)
    assert not builder.counts.filtered.keys() & builder.counts.built.keys()


def test_filters_apply_to_stage2_tts(build: Path) -> None:
    every, _ = _specs(build, "stage2")
    kept, builder = _specs(build, "stage2", filters={"min_snr_db": 10})
    assert {s["meta"]["segment_id"] for s in every} - {s["meta"]["segment_id"] for s in kept} == {
        _sid("b1")
    }
    assert builder.counts.filtered == {"tts: min_snr_db": 1}
    assert builder.counts.filtered_s["tts: min_snr_db"] == pytest.approx(2.5)


def test_no_filters_filter_nothing(build: Path) -> None:
    specs, builder = _specs(build, filters={})
    assert specs and not builder.counts.filtered and not builder.counts.filtered_s


def test_filter_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="min_snr"):
        QualityFilters.from_config({"min_snr": 3})
    with pytest.raises(ValueError, match="chars_per_second"):
        QualityFilters.from_config({"chars_per_second": [25, 2]})
    assert set(REASONS) == {
        "min_snr_db",
        "max_clipping_ratio",
        "min_speech_ratio",
        "chars_per_second",
        "max_cer_vs_model",
        "language_must_match_model",
    }


def test_cer_is_a_character_edit_distance_over_normalised_text() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "abc") == 0
    assert cer("HELLO WORLD", "Hello, world.") == 0.0
    assert cer("abcd", "abxd") == pytest.approx(0.25)
    assert cer("", "") == 0.0 and cer("", "x") == 1.0
    assert cer("广州市房地产", "广州市房地") == pytest.approx(1 / 6)


# ---- through the shards step ------------------------------------------------------------------


def test_every_label_task_reaches_the_shard_and_reads_back(
    ray_local, tmp_path: Path, build: Path
) -> None:
    from minmo.testing.tiny_models import build_tiny_checkpoint
    from pipelines.shards.step import ShardsConfig, run_shards

    side = tmp_path / "events.jsonl"
    side.write_text(json.dumps({"source_uri": "audio/d.wav", "events": ["beep"]}) + "\n")
    config = ShardsConfig(
        speech_tokenizer=str(build_tiny_checkpoint(tmp_path / "s3tiny.pt")),
        stages=["stage1"],
        samples={"audio_events": str(side)},
        label_source={"emotion": "human_then_model"},
        filters={"min_snr_db": 10},
    )
    run_shards(str(build), config, progress=False)
    urls = sorted(str(p) for p in (build / "shards" / "stage1").rglob("*.tar"))
    samples = [json.loads(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False)]
    answers: dict[tuple[str, str | None], set[str]] = {}
    for meta in samples:
        question = (meta["task"], meta["provenance"].get("question"))
        answers.setdefault(question, set()).add(meta["messages"][-1]["content"])
        assert meta["provenance"]["label_source"] in ("human", "model")
        assert meta["provenance"].get("recording_id") or meta["provenance"].get("source_key")
    assert answers[("emotion", None)] == {"happy", "angry"}  # a1 human, c1 model
    assert answers[("speaker_analysis", "gender")] == {"female"}
    assert answers[("speaker_analysis", "age")] == {
        "about 34 years old, in their thirties",
        "a child, about 8 years old",
    }
    assert answers[("audio_event", None)] == {"laughter", "beep"}
    assert answers[("speech_translation", None)] == {"Das Birkenkanu glitt."}
    # recording b is below 10 dB SNR: none of its samples reached the shard
    assert "hello world" not in answers[("asr", None)]
    emotion = [m for m in samples if m["task"] == "emotion"]
    assert {m["provenance"]["label_source"] for m in emotion} == {"human", "model"}


def test_turn_questions_stay_and_say_their_labels_are_a_backends(build: Path) -> None:
    from schemas import TURNS

    turns = [
        {"recording_id": _rid("c"), "speaker": s, "channel": 0, "start_s": a, "end_s": b}
        | {"backend": "pyannote", "confidence": 0.9}
        for s, a, b in (("spk0", 0.0, 1.0), ("spk1", 1.2, 2.8), ("spk0", 2.8, 3.0))
    ]
    _write(build, "turns", "diarize~u1_0000.parquet", TURNS.from_rows(turns))
    specs, _ = _specs(build)
    speakers = _by(specs, "speaker_analysis", question="speakers")
    assert set(speakers) == {_rid("c")}
    meta = speakers[_rid("c")]["meta"]
    assert meta["speakers"] == 2 and meta["turns"] == 3 and meta["recording_id"] == _rid("c")
    assert meta["label_source"] == "model" and meta["label_model"] == "pyannote"
    # gender / age questions have no model source: counted, the turn questions still built
    specs, builder = _specs(build, label_source={"speaker_analysis": "model"})
    assert set(_by(specs, "speaker_analysis", question="speakers")) == {_rid("c")}
    assert _by(specs, "speaker_analysis", question="gender") == {}
    assert builder.counts.skipped["speaker_analysis: no model label"] == len(SEGMENTS_IN)
