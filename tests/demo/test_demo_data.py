"""Tests for minmo.demo: the corpus meets its minimums, is deterministic, and its references
(RTTM, turns.json) agree with each other and with the audio they describe."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from minmo.audio.trim import pauses, trim_silence
from minmo.demo import DemoSummary, EspeakError, build_demo_corpus
from minmo.demo import conversation as conv
from minmo.demo.script import CONVERSATIONS, MEETINGS, ConversationScript, Line, Phrase, voice
from minmo.demo.speak import decode_streamed_wav
from schemas.units import SAMPLE_RATE_HZ

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng not installed: apt-get install espeak-ng"
)
MANIFEST_KEYS = {"path", "text", "language", "speaker", "task", "corpus"}
UTTERANCE_LABEL_KEYS = {"gender", "emotion", "audio_events", "espeak_voice"}


# ---------------------------------------------------------------- pure parts (no espeak-ng)


def test_missing_espeak_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(EspeakError, match="apt-get install espeak-ng"):
        build_demo_corpus(tmp_path / "out", progress=False)


def test_streamed_wav_with_placeholder_sizes_decodes_exactly() -> None:
    samples = (np.sin(np.arange(2205) / 7.0) * 0.5).astype(np.float32)
    pcm = np.round(samples * 32767).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, 22050, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    struct.pack_into("<I", data, 4, 0x7FFFF000)  # what a non-seekable writer leaves
    struct.pack_into("<I", data, data.index(b"data") + 4, 0x7FFFF000)
    audio, rate = decode_streamed_wav(bytes(data))
    assert rate == 22050
    np.testing.assert_array_equal(np.round(audio * 32768).astype(np.int16), pcm)


def _tone(seconds: float, rate: int = SAMPLE_RATE_HZ, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _silence(seconds: float, rate: int = SAMPLE_RATE_HZ) -> np.ndarray:
    return np.zeros(round(seconds * rate), np.float32)


def test_trim_cuts_to_speech_and_pauses_are_found() -> None:
    clip = np.concatenate([_silence(0.2), _tone(0.5), _silence(0.15), _tone(0.3), _silence(0.3)])
    trimmed = trim_silence(clip, SAMPLE_RATE_HZ)
    assert len(trimmed) == 160 * 95  # 0.5 + 0.15 + 0.3 s, whole 10 ms frames
    assert pauses(trimmed, SAMPLE_RATE_HZ) == [160 * 50]


def _toy_script() -> tuple[ConversationScript, list[conv.LineClips]]:
    lines = (
        Line("A", Phrase("one two three four five six"), backchannel=True),
        Line("B", Phrase("first part, second part"), entry="overlap"),
        Line("A", Phrase("cutting in now"), entry="interrupt"),
        Line("B", Phrase("fine")),
    )
    script = ConversationScript("toy", "en", "en_m3", "en_f2", True, lines)
    interrupted = np.concatenate([_tone(1.0), _silence(0.2), _tone(1.0)])
    clips = [
        conv.LineClips(_tone(4.0)),
        conv.LineClips(interrupted, clause=_tone(1.0)),
        conv.LineClips(_tone(1.5)),
        conv.LineClips(_tone(0.5)),
    ]
    return script, clips


def test_planner_places_overlap_interruption_and_backchannel() -> None:
    script, clips = _toy_script()
    bcs = {s: [(Phrase("mm-hm"), _tone(0.3))] for s in ("A", "B")}
    turns = conv.plan_conversation(script, clips, bcs, np.random.default_rng(0))
    by_kind = Counter(t.kind for t in turns)
    assert by_kind == {"turn": 3, "interruption": 1, "backchannel": 1}
    cut = next(t for t in turns if t.text == "first part")  # stopped at its comma
    assert cut.duration_ms == 1000
    interrupter = next(t for t in turns if t.kind == "interruption")
    assert interrupter.start_ms < cut.end_ms
    bc = next(t for t in turns if t.kind == "backchannel")
    host = turns[0]
    assert bc.speaker == "B" and host.start_ms < bc.start_ms and bc.end_ms < host.end_ms


# ---------------------------------------------------------------- the real corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoSummary]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed: apt-get install espeak-ng")
    out = tmp_path_factory.mktemp("demo")
    return out, build_demo_corpus(out, seed=0, progress=False)


def _manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _conversations(out: Path) -> list[tuple[dict[str, Any], np.ndarray, int, str]]:
    """(turns.json, audio frames x channels, rate, rttm text) per conversation in the manifest."""
    found = []
    for rec in _manifest(out):
        if rec["task"] != "conversation":
            continue
        wav = out / rec["path"]
        doc = json.loads(wav.with_suffix(".turns.json").read_text())
        audio, rate = sf.read(wav, always_2d=True, dtype="float64")
        found.append((doc, audio, rate, wav.with_suffix(".rttm").read_text()))
    return found


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


@needs_espeak
def test_counts_languages_and_voices(corpus: tuple[Path, DemoSummary]) -> None:
    out, summary = corpus
    records = _manifest(out)
    utts = [r for r in records if r["task"] == "asr"]
    convs = [r for r in records if r["task"] == "conversation"]
    assert len(utts) >= 40 and len(convs) >= 6
    assert len({r["language"] for r in utts}) >= 3
    assert len({r["speaker"] for r in utts}) >= 4
    assert summary.utterances == len(utts) and summary.conversations == len(convs)
    assert summary.n_languages >= 3 and summary.n_voices >= 4
    assert summary.manifest == str(out / "manifest.jsonl")
    assert (out / "README.md").is_file()


@needs_espeak
def test_manifest_rows_are_complete_and_paths_exist(corpus: tuple[Path, DemoSummary]) -> None:
    out, summary = corpus
    total_s = 0.0
    for rec in _manifest(out):
        labels = set(rec) - MANIFEST_KEYS
        assert labels <= UTTERANCE_LABEL_KEYS, labels
        if rec["task"] == "asr":
            assert rec["gender"] == voice(rec["speaker"]).gender
            assert rec.get("emotion") in (None, "happy", "sad")
            assert rec.get("audio_events") in (None, ["beep"], ["noise"])
        else:
            assert not labels
        assert rec["corpus"] == "minmo-demo"
        path = out / rec["path"]
        assert path.is_file(), rec["path"]
        assert rec["path"].startswith("utterances/" if rec["task"] == "asr" else "conversations/")
        if rec["task"] == "asr":
            assert rec["text"] and rec["speaker"]
        else:
            assert rec["task"] == "conversation"
            assert rec["text"] is None and rec["speaker"] is None
        info = sf.info(path)
        total_s += info.frames / info.samplerate
    assert total_s == pytest.approx(summary.audio_s, abs=0.01)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    # 15 MB of utterances and conversations, 2.4 MB of meetings, 1.3 MB of far-field call
    assert size < 20e6


@needs_espeak
def test_some_utterances_carry_emotion_and_event_labels(
    corpus: tuple[Path, DemoSummary],
) -> None:
    utts = [r for r in _manifest(corpus[0]) if r["task"] == "asr"]
    emotions = Counter(r.get("emotion") for r in utts)
    events = Counter(tuple(r.get("audio_events") or ()) for r in utts)
    assert emotions["happy"] >= 3 and emotions["sad"] >= 3 and emotions[None] >= len(utts) // 2
    assert events[("beep",)] >= 3 and events[("noise",)] >= 3
    assert {r["gender"] for r in utts} == {"female", "male"}


@needs_espeak
def test_a_mixed_in_beep_is_in_the_audio(corpus: tuple[Path, DemoSummary]) -> None:
    """The label is true: most of the energy in the last 0.45 s of a beep-labelled clip is a
    1 kHz tone, and in an unlabelled clip's tail it is not."""
    utts = [r for r in _manifest(corpus[0]) if r["task"] == "asr"]

    def tail_tone_ratio(rec: dict) -> float:
        audio, rate = sf.read(corpus[0] / rec["path"], dtype="float32")
        tail = audio[-round(0.45 * rate) :]
        power = np.abs(np.fft.rfft(tail)) ** 2
        freqs = np.fft.rfftfreq(len(tail), 1 / rate)
        return float(power[(freqs > 950) & (freqs < 1050)].sum() / power.sum())

    beeps = [r for r in utts if r.get("audio_events") == ["beep"]]
    plain = [r for r in utts if not r.get("audio_events")]
    assert min(tail_tone_ratio(r) for r in beeps) > 0.5
    assert max(tail_tone_ratio(r) for r in plain[:8]) < 0.2


@needs_espeak
def test_utterances_vary_rate_and_container(corpus: tuple[Path, DemoSummary]) -> None:
    out, _ = corpus
    infos = [sf.info(out / r["path"]) for r in _manifest(out) if r["task"] == "asr"]
    kinds = Counter((i.format, i.samplerate) for i in infos)
    assert {("FLAC", 22050), ("FLAC", 44100), ("WAV", 8000)} <= set(kinds)
    assert kinds[("WAV", SAMPLE_RATE_HZ)] > len(infos) / 2
    assert all(i.channels == 1 and i.subtype == "PCM_16" for i in infos)


@needs_espeak
def test_rttm_agrees_with_turns_json(corpus: tuple[Path, DemoSummary]) -> None:
    out, _ = corpus
    for doc, audio, rate, rttm in _conversations(out):
        rows = [line.split() for line in rttm.splitlines()]
        assert all(len(r) == 10 and r[0] == "SPEAKER" and r[1] == doc["recording"] for r in rows)
        from_rttm = [(r[7], r[3], r[4]) for r in rows]
        from_json = [
            (t["speaker"], f"{t['start_s']:.3f}", f"{t['end_s'] - t['start_s']:.3f}")
            for t in doc["turns"]
        ]
        assert from_rttm == from_json
        assert rate == doc["sample_rate_hz"] == SAMPLE_RATE_HZ
        assert len(audio) / rate == pytest.approx(doc["duration_s"], abs=1e-3)


@needs_espeak
def test_turns_are_well_formed(corpus: tuple[Path, DemoSummary]) -> None:
    out, _ = corpus
    for doc, _audio, _rate, _rttm in _conversations(out):
        turns = doc["turns"]
        assert 25.0 <= doc["duration_s"] <= 60.0
        assert [t["start_s"] for t in turns] == sorted(t["start_s"] for t in turns)
        for t in turns:
            assert 0.0 <= t["start_s"] < t["end_s"] <= doc["duration_s"]
            assert t["kind"] in {"turn", "backchannel", "interruption"} and t["text"]
            expected = doc["channels"][t["speaker"]] if doc["channels"] else None
            assert t["channel"] == expected
        assert {t["speaker"] for t in turns} == set(doc["speakers"])
        for speaker in doc["speakers"]:
            own = [t for t in turns if t["speaker"] == speaker]
            assert all(a["end_s"] <= b["start_s"] for a, b in pairwise(own))


def _overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["start_s"] < b["end_s"] and b["start_s"] < a["end_s"]


@needs_espeak
def test_every_conversation_has_overlap_interruption_and_backchannel(
    corpus: tuple[Path, DemoSummary],
) -> None:
    out, _ = corpus
    clauses = {  # first clause -> full line, for every line the script has interrupted
        conv.first_clause(line.phrase).text: line.phrase.text
        for script in (*CONVERSATIONS, *MEETINGS)
        for line, nxt in pairwise(script.lines)
        if nxt.entry == "interrupt"
    }
    for doc, _audio, _rate, _rttm in _conversations(out):
        turns = doc["turns"]
        main = [t for t in turns if t["kind"] != "backchannel"]
        assert any(_overlaps(a, b) for a, b in pairwise(main) if a["speaker"] != b["speaker"])
        for i, t in enumerate(main):
            if t["kind"] != "interruption":
                continue
            cut = main[i - 1]
            assert cut["speaker"] != t["speaker"] and _overlaps(cut, t)
            # the interrupted speaker stops early: their reference text is only the first clause
            assert cut["text"] in clauses and clauses[cut["text"]] != cut["text"]
        assert any(t["kind"] == "interruption" for t in main)
        bcs = [t for t in turns if t["kind"] == "backchannel"]
        assert bcs
        for bc in bcs:  # said while the other speaker keeps the floor
            assert any(
                m["speaker"] != bc["speaker"]
                and m["start_s"] < bc["start_s"] < bc["end_s"] < m["end_s"]
                for m in main
            )


@needs_espeak
def test_stereo_references_match_speech_on_each_channel(
    corpus: tuple[Path, DemoSummary],
) -> None:
    out, _ = corpus
    stereo = [c for c in _conversations(out) if c[0]["channels"] is not None]
    assert len(stereo) >= 3
    for doc, audio, rate, _rttm in stereo:
        assert audio.shape[1] == 2 and doc["channels"] == {"A": 0, "B": 1}
        for speaker, ch in doc["channels"].items():
            x = audio[:, ch]
            own = [t for t in doc["turns"] if t["speaker"] == speaker]
            spans = [(round(t["start_s"] * rate), round(t["end_s"] * rate)) for t in own]
            quiet = np.ones(len(x), bool)
            for s, e in spans:
                quiet[max(0, s - rate // 20) : e + rate // 20] = False
            noise = _rms(x[quiet])  # everything else on this channel, incl. the other speaker
            assert noise > 0  # finite SNR
            edge = rate // 20  # 50 ms
            for s, e in spans:
                assert _rms(x[s:e]) > 30 * noise  # > ~30 dB above the channel floor
                assert _rms(x[s : s + edge]) > 2 * noise  # speech starts at the boundary ...
                assert _rms(x[e - edge : e]) > 2 * noise  # ... and is still there at the end
                if s >= edge and quiet[s - edge : s].all():
                    assert _rms(x[s - edge : s]) < 2 * noise  # ... and not before it


@needs_espeak
def test_mono_mixes_hold_both_speakers_without_clipping(
    corpus: tuple[Path, DemoSummary],
) -> None:
    out, _ = corpus
    # The far-field call is noisy by design (10-20 dB SNR): tests/audio/test_far_field.py.
    mono = [c for c in _conversations(out) if c[0]["channels"] is None and "far_field" not in c[0]]
    assert len(mono) >= 3
    for doc, audio, rate, _rttm in mono:
        assert audio.shape[1] == 1 and float(np.abs(audio).max()) < 0.99
        speech = np.zeros(len(audio), bool)
        for t in doc["turns"]:
            speech[round(t["start_s"] * rate) : round(t["end_s"] * rate)] = True
        assert _rms(audio[speech, 0]) > 30 * _rms(audio[~speech, 0]) > 0
        assert {t["speaker"] for t in doc["turns"]} == set(doc["speakers"])
        assert len(doc["speakers"]) in (2, 3, 4)


@needs_espeak
def test_meetings_are_mono_3_to_4_party_with_overlap_and_exact_references(
    corpus: tuple[Path, DemoSummary],
) -> None:
    """Two meetings: mono, 3-4 distinct voices, overlapping hand-overs, and references whose
    turns are where the speech is (RTTM and turns.json agreement is checked above for all)."""
    out, summary = corpus
    meetings = {c[0]["recording"]: c for c in _conversations(out) if len(c[0]["speakers"]) > 2}
    assert sorted(meetings) == sorted(m.stem for m in MEETINGS) and summary.meetings == 2
    assert sorted(len(c[0]["speakers"]) for c in meetings.values()) == [3, 4]
    for doc, audio, rate, rttm in meetings.values():
        assert doc["channels"] is None and audio.shape[1] == 1
        assert len(set(doc["speakers"].values())) == len(doc["speakers"])  # distinct voices
        assert {line.split()[7] for line in rttm.splitlines()} == set(doc["speakers"])
        main = [t for t in doc["turns"] if t["kind"] != "backchannel"]
        overlapped = [
            (a, b) for a, b in pairwise(main) if a["speaker"] != b["speaker"] and _overlaps(a, b)
        ]
        assert len(overlapped) >= 2
        speech = np.zeros(len(audio), bool)
        for t in doc["turns"]:
            speech[round(t["start_s"] * rate) : round(t["end_s"] * rate)] = True
        noise = _rms(audio[~speech, 0])
        edge = rate // 20  # 50 ms
        for t in doc["turns"]:  # each reference turn is speech from its start to its end
            a, b = round(t["start_s"] * rate), round(t["end_s"] * rate)
            assert (
                _rms(audio[a : a + edge, 0]) > 2 * noise
                and _rms(audio[b - edge : b, 0]) > 2 * noise
            )


@needs_espeak
def test_meeting_references_label_one_sample_per_speaker(
    corpus: tuple[Path, DemoSummary],
) -> None:
    """label-turns on a meeting's exact reference: each speaker plays the user once, the others
    are one assistant side; speak-now falls only where the user's own turn ends."""
    from minmo.duplex.labels import DuplexLabelConfig
    from pipelines.label_turns import label_conversation

    out, _ = corpus
    for doc, _audio, _rate, _rttm in _conversations(out):
        if len(doc["speakers"]) < 3:
            continue
        item = {
            "recording_id": doc["recording"],
            "source_uri": doc["recording"],
            "duration_s": doc["duration_s"],
            "turns": [{**t, "channel": 0} for t in doc["turns"]],
        }
        result = label_conversation(item, DuplexLabelConfig())
        rows = result["tables"]["frame_labels"]
        assert [r["user_speaker"] for r in rows] == sorted(doc["speakers"])
        for row in rows:
            others = sorted(set(doc["speakers"]) - {row["user_speaker"]})
            assert row["assistant_speaker"] == "+".join(others)
            own_ends = {t["end_s"] for t in doc["turns"] if t["speaker"] == row["user_speaker"]}
            events = [e for e in result["tables"]["events"] if e["sample_id"] == row["sample_id"]]
            kinds = Counter(e["event_type"] for e in events)
            assert kinds["assistant_turn_taking"] >= 1 and kinds["user_turn_taking"] >= 1
            for e in events:
                if e["event_type"] == "assistant_turn_taking":
                    assert e["time_s"] in own_ends
        assert sum(e["event_type"] == "user_backchannel" for e in result["tables"]["events"]) >= 2


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@needs_espeak
@pytest.mark.slow
def test_same_seed_gives_identical_bytes_and_rerun_is_idempotent(
    corpus: tuple[Path, DemoSummary], tmp_path: Path
) -> None:
    out, _ = corpus
    first = _hashes(out)
    build_demo_corpus(tmp_path / "again", seed=0, progress=False)
    assert _hashes(tmp_path / "again") == first
    build_demo_corpus(out, seed=0, progress=False)  # rerun in place: same bytes, no temp files
    assert _hashes(out) == first
    build_demo_corpus(tmp_path / "other", seed=1, progress=False)
    other = _hashes(tmp_path / "other")
    assert other.keys() == first.keys() and other != first
