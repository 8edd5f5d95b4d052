"""Build the embedded demo corpus: utterances, conversations, references, manifest.

Owns the file layout, the per-file plan (which sentence, voice, rate and container), the seeded
random choices, atomic writes and the summary. It must not synthesise or place audio itself
(`speak.py`, `conversation.py`) nor hold the content (`script.py`).

OUT is a local path or an object-store URI (`s3://bucket/demo-src`): every write goes through
the pyarrow filesystem that `open_filesystem` gives for it, never through a local path API, so
a URI can never turn into a relative directory named `s3:`.

Layout (`OUT/README.md` repeats it for users):

    OUT/manifest.jsonl                    one JSON object per audio file
    OUT/utterances/<lang>/<voice>_<nnn>.{wav,flac}
    OUT/conversations/<stem>.wav          16 kHz, stereo (A = ch 0, B = ch 1) or mono mix;
                                          the meetings (3-4 speakers) are mono mixes
    OUT/conversations/<stem>.rttm         exact speaker turns
    OUT/conversations/<stem>.turns.json   turns with text, kind and channel

The list of files does not depend on the seed (only timing, levels and noise do), so
rebuilding into the same directory with another seed leaves no stale files behind.
"""

from __future__ import annotations

import json
import os
import posixpath
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
from tqdm import tqdm

from minmo.audio.encode import pcm16_bytes
from minmo.audio.farfield import FarFieldSpec, far_field_mix
from minmo.audio.resample import resample
from minmo.audio.trim import trim_silence
from minmo.demo import conversation as conv
from minmo.demo.script import (
    BACKCHANNELS,
    CONVERSATIONS,
    FAR_FIELD_CALLS,
    MEETINGS,
    SENTENCES,
    VOICES,
    ConversationScript,
    Phrase,
    SpeakerLabel,
    Voice,
    voice,
)
from minmo.demo.speak import SpeakRequest, espeak_binary, synthesize_many
from minmo.io.atomic import write_bytes_atomic
from minmo.io.fs import open_filesystem, to_uri
from schemas.units import SAMPLE_RATE_HZ

CORPUS = "minmo-demo"
MANIFEST = "manifest.jsonl"

# Most utterances are 16 kHz WAV; every tenth-slot below varies rate and container so ingest
# meets resampling and FLAC decoding (index % 10 -> (rate, container)).
FORMAT_SLOTS: dict[int, tuple[int, str]] = {
    3: (22_050, "flac"),
    5: (44_100, "flac"),
    7: (8_000, "wav"),
    8: (22_050, "flac"),
}
DEFAULT_FORMAT = (SAMPLE_RATE_HZ, "wav")

# Seeded ranges for utterance rendering.
UTT_PEAK_DBFS = (-9.0, -2.0)
UTT_LEAD_S = (0.10, 0.30)
UTT_TAIL_S = (0.10, 0.35)
UTT_NOISE_DBFS = (-80.0, -66.0)
CONV_PEAK_DBFS = (-8.0, -4.0)
CONV_NOISE_DBFS = (-66.0, -58.0)

# Labelled variety (issue 17): some utterances are spoken in an emotional style (espeak-ng rate
# and pitch moved the way the emotion moves them), some get a sound event mixed into their
# leading or trailing silence; the manifest labels both. index % period -> label.
EMOTION_SLOTS: dict[int, str] = {2: "happy", 5: "sad"}
EMOTION_PERIOD = 6
EMOTION_STYLE: dict[str, tuple[float, int]] = {"happy": (1.25, 18), "sad": (0.78, -14)}
"""emotion -> (rate factor, pitch offset) applied to the voice."""
EVENT_SLOTS: dict[int, str] = {3: "beep", 6: "noise"}
EVENT_PERIOD = 7
EVENT_S = 0.3  # length of a mixed-in event
EVENT_DBFS = {"beep": -14.0, "noise": -20.0}
BEEP_HZ = 1000.0

# Separate seed streams per item: a change to one file's draws cannot shift another's.
_STREAM_UTTERANCE, _STREAM_CONVERSATION = 1, 2


@dataclass(frozen=True)
class DemoSummary:
    """What a build wrote; `describe()` is the closing line the CLI prints."""

    out_dir: str  # OUT as a canonical URI: an absolute local path, or scheme://bucket/key
    manifest: str  # OUT/manifest.jsonl, likewise
    utterances: int  # single-speaker files (task "asr")
    conversations: int  # recordings of task "conversation": two-party ones and meetings
    meetings: int  # of those, the 3-4 party meetings
    languages: tuple[str, ...]  # ISO 639-1 codes, sorted
    voices: tuple[str, ...]  # synthetic speaker ids, sorted
    audio_s: float  # total audio duration over all files
    bytes_written: int
    elapsed_s: float  # wall time; the only field that differs between identical builds

    @property
    def n_languages(self) -> int:
        return len(self.languages)

    @property
    def n_voices(self) -> int:
        return len(self.voices)

    def describe(self) -> str:
        return (
            f"demo-data: {self.utterances} utterances + {self.conversations} conversations "
            f"({self.meetings} meetings), "
            f"{self.n_languages} languages ({', '.join(self.languages)}), {self.n_voices} voices, "
            f"{self.audio_s:.1f} s audio, {self.bytes_written / 1e6:.1f} MB in "
            f"{self.elapsed_s:.1f} s -> {self.manifest}"
        )


@dataclass(frozen=True)
class UtterancePlan:
    """One single-speaker utterance file: what is said, by whom, and how it is stored."""

    index: int
    voice: Voice
    phrase: Phrase
    rate_hz: int
    container: str
    emotion: str | None = None  # spoken in this style (EMOTION_STYLE), and labelled so
    event: str | None = None  # a sound event mixed in (EVENT_SLOTS), and labelled so

    @property
    def path(self) -> str:
        return f"utterances/{self.voice.language}/{self.voice.id}_{self.index:03d}.{self.container}"

    @property
    def speaking_voice(self) -> Voice:
        """The voice as espeak-ng is asked to speak: its emotion's rate and pitch applied."""
        if self.emotion is None:
            return self.voice
        rate, pitch = EMOTION_STYLE[self.emotion]
        return replace(
            self.voice,
            rate_wpm=round(self.voice.rate_wpm * rate),
            pitch=min(99, max(0, self.voice.pitch + pitch)),
        )


def plan_utterances() -> list[UtterancePlan]:
    """Every sentence once; voices alternate within a language; formats follow FORMAT_SLOTS."""
    plans: list[UtterancePlan] = []
    for language, phrases in SENTENCES.items():
        voices = [v for v in VOICES if v.language == language]
        if not voices:
            raise ValueError(f"no demo voice speaks {language!r}")
        for k, phrase in enumerate(phrases):
            index = len(plans)
            rate, container = FORMAT_SLOTS.get(index % 10, DEFAULT_FORMAT)
            plans.append(
                UtterancePlan(
                    index,
                    voices[k % len(voices)],
                    phrase,
                    rate,
                    container,
                    emotion=EMOTION_SLOTS.get(index % EMOTION_PERIOD),
                    event=EVENT_SLOTS.get(index % EVENT_PERIOD),
                )
            )
    return plans


def build_demo_corpus(
    out_dir: str | Path,
    seed: int = 0,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> DemoSummary:
    """Write the demo corpus into `out_dir` (a local path or a URI such as `s3://bucket/key`;
    `storage_options` open its filesystem); the same seed gives byte-identical files.

    Every file is written atomically, so an interrupted build never leaves a half-written
    file under its final name, and a rerun simply rewrites the same bytes.
    """
    started = time.perf_counter()
    espeak_binary()  # fail before creating anything if the synthesiser is missing
    fs, root = open_filesystem(str(out_dir), **(storage_options or {}))
    out = _Out(fs, root)
    utterances = plan_utterances()
    # Later groups last: each recording draws from its own seed stream, so earlier files stay put.
    scripts = (*CONVERSATIONS, *MEETINGS, *FAR_FIELD_CALLS)
    clips = _synthesize_all(utterances, scripts, progress)

    written = 0
    audio_s = 0.0
    records: list[dict[str, Any]] = []
    for plan in utterances:
        audio = _render_utterance(plan, clips[(plan.phrase.spoken, plan.speaking_voice)], seed)
        written += out.write(plan.path, pcm16_bytes(audio, plan.rate_hz, plan.container))
        audio_s += len(audio) / plan.rate_hz
        records.append(_utterance_record(plan))

    for index, script in enumerate(scripts):
        files, duration_s = _build_conversation(script, index, clips, seed)
        for rel, data in files.items():
            written += out.write(rel, data)
        audio_s += duration_s
        records.append(_record(f"conversations/{script.stem}.wav", None, script.language, None))

    written += out.write(MANIFEST, _jsonl(records))
    written += out.write("README.md", README.encode("utf-8"))

    used_voices = {p.voice.id for p in utterances}
    used_voices |= {v for s in scripts for v in s.voice_ids.values()}
    summary = DemoSummary(
        out_dir=to_uri(fs, root),
        manifest=to_uri(fs, posixpath.join(root, MANIFEST)),
        utterances=len(utterances),
        conversations=len(scripts),
        meetings=len(MEETINGS),
        languages=tuple(sorted({r["language"] for r in records})),
        voices=tuple(sorted(used_voices)),
        audio_s=round(audio_s, 3),
        bytes_written=written,
        elapsed_s=time.perf_counter() - started,
    )
    if progress:
        print(summary.describe(), file=sys.stderr)
    return summary


def _synthesize_all(
    utterances: Iterable[UtterancePlan],
    scripts: Iterable[ConversationScript],
    progress: bool,
) -> dict[SpeakRequest, tuple[np.ndarray, int]]:
    """One espeak-ng call per distinct (text, voice) the whole corpus needs."""
    requests: list[SpeakRequest] = [(p.phrase.spoken, p.speaking_voice) for p in utterances]
    for script in scripts:
        voices = {label: voice(v) for label, v in script.voice_ids.items()}
        for i, line in enumerate(script.lines):
            requests.append((line.phrase.spoken, voices[line.speaker]))
            if i + 1 < len(script.lines) and script.lines[i + 1].entry == "interrupt":
                requests.append((conv.first_clause(line.phrase).spoken, voices[line.speaker]))
        for v in voices.values():
            requests.extend((bc.spoken, v) for bc in BACKCHANNELS[script.language])
    unique = len(set(requests))
    with tqdm(total=unique, desc="demo-data: espeak-ng", unit="clip", disable=not progress) as bar:
        return synthesize_many(requests, workers=min(4, os.cpu_count() or 1), on_done=bar.update)


def _rng(stream: int, index: int, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def _render_utterance(plan: UtterancePlan, native: tuple[np.ndarray, int], seed: int) -> np.ndarray:
    """Trimmed speech at the planned rate and level, padded with a little noisy silence."""
    rng = _rng(_STREAM_UTTERANCE, plan.index, seed)
    audio, rate = native
    # resample works on (channels, samples): one channel here
    speech = resample(trim_silence(audio, rate)[None], rate, plan.rate_hz)[0]
    speech = _peak_normalize(speech, rng.uniform(*UTT_PEAK_DBFS))
    lead = np.zeros(round(rng.uniform(*UTT_LEAD_S) * plan.rate_hz), np.float32)
    tail = np.zeros(round(rng.uniform(*UTT_TAIL_S) * plan.rate_hz), np.float32)
    out = np.concatenate([lead, speech, tail])
    noise = 10 ** (rng.uniform(*UTT_NOISE_DBFS) / 20) * rng.standard_normal(len(out))
    out = out + noise.astype(np.float32)
    if plan.event is not None:
        out = _mix_event(out, plan.event, plan.rate_hz, rng)
    return np.clip(out, -1.0, 1.0)


def _mix_event(audio: np.ndarray, event: str, rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    """A beep (1 kHz tone) or a white-noise burst, EVENT_S long with 10 ms ramps, appended after
    a short pause: the clip's `audio_events` label says it is there."""
    n = round(EVENT_S * rate_hz)
    t = np.arange(n) / rate_hz
    if event == "beep":
        burst = np.sin(2 * np.pi * BEEP_HZ * t)
    else:
        burst = rng.standard_normal(n)
        burst /= np.abs(burst).max()
    ramp = min(n // 2, round(0.01 * rate_hz))
    envelope = np.ones(n)
    envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
    envelope[n - ramp :] = np.linspace(1.0, 0.0, ramp)
    burst = (10 ** (EVENT_DBFS[event] / 20) * burst * envelope).astype(np.float32)
    gap = np.zeros(round(0.15 * rate_hz), np.float32)
    return np.concatenate([audio, gap, burst, gap])


def _to_work_rate(native: tuple[np.ndarray, int]) -> np.ndarray:
    audio, rate = native
    work = resample(audio[None], rate, SAMPLE_RATE_HZ)[0]
    return _peak_normalize(trim_silence(work, SAMPLE_RATE_HZ), 0.0)


def _build_conversation(
    script: ConversationScript,
    index: int,
    clips: dict[SpeakRequest, tuple[np.ndarray, int]],
    seed: int,
) -> tuple[dict[str, bytes], float]:
    """Audio plus both references for one scripted conversation, as {relative path: bytes},
    and the recording's duration in seconds."""
    rng = _rng(_STREAM_CONVERSATION, index, seed)
    voices: dict[SpeakerLabel, Voice] = {label: voice(v) for label, v in script.voice_ids.items()}
    line_clips: list[conv.LineClips] = []
    for i, line in enumerate(script.lines):
        v = voices[line.speaker]
        full = _to_work_rate(clips[(line.phrase.spoken, v)])
        clause = None
        if i + 1 < len(script.lines) and script.lines[i + 1].entry == "interrupt":
            clause = _to_work_rate(clips[(conv.first_clause(line.phrase).spoken, v)])
        line_clips.append(conv.LineClips(full, clause))
    backchannels = {
        label: [(bc, _to_work_rate(clips[(bc.spoken, v)])) for bc in BACKCHANNELS[script.language]]
        for label, v in voices.items()
    }
    turns = conv.plan_conversation(script, line_clips, backchannels, rng)
    length_ms = conv.conversation_length_ms(turns, rng)
    gains: dict[SpeakerLabel, float] = {
        label: 10 ** (rng.uniform(*CONV_PEAK_DBFS) / 20) for label in voices
    }
    doc = conv.turns_document(script, turns, length_ms, {k: v.id for k, v in voices.items()})
    if script.far_field:
        spec = FarFieldSpec.draw(rng)
        tracks = conv.speaker_tracks(turns, length_ms, gains)
        audio = far_field_mix(tracks, spec, rng)[:, None]
        doc["far_field"] = {k: round(v, 3) for k, v in asdict(spec).items()}
    else:
        noise_dbfs = rng.uniform(*CONV_NOISE_DBFS)
        audio = conv.render(turns, length_ms, script.stereo, gains, noise_dbfs, rng)
    base = f"conversations/{script.stem}"
    files = {
        f"{base}.wav": pcm16_bytes(audio, SAMPLE_RATE_HZ, "wav"),
        f"{base}.rttm": conv.rttm(script.stem, turns).encode("utf-8"),
        f"{base}.turns.json": (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode(),
    }
    return files, length_ms / 1000


def _peak_normalize(audio: np.ndarray, peak_dbfs: float) -> np.ndarray:
    peak = float(np.abs(audio).max())
    if peak == 0.0:
        raise ValueError("cannot normalise a silent clip")
    return (audio * (10 ** (peak_dbfs / 20) / peak)).astype(np.float32)


class _Out:
    """OUT on its filesystem; writes go through pyarrow.fs alone, local or object store."""

    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        self.fs, self.root = fs, root
        self._made: set[str] = set()  # folders made: on an object store each make is a request

    def write(self, relative: str, data: bytes) -> int:
        """Write atomically (`minmo.io.atomic`): the file appears whole under its name."""
        path = posixpath.join(self.root, relative)
        parent = posixpath.dirname(path)
        if parent not in self._made:
            self.fs.create_dir(parent, recursive=True)
            self._made.add(parent)
        write_bytes_atomic(self.fs, path, data, make_parent=False)
        return len(data)


def _utterance_record(plan: UtterancePlan) -> dict[str, Any]:
    """A manifest row with the utterance's labels: gender always (the espeak voice's), emotion
    and audio events where the plan gave some, and the espeak voice, a column ingest does not
    know (its summary lists it as ignored)."""
    record = _record(plan.path, plan.phrase.text, plan.voice.language, plan.voice.id)
    record["gender"] = plan.voice.gender
    if plan.emotion is not None:
        record["emotion"] = plan.emotion
    if plan.event is not None:
        record["audio_events"] = [plan.event]
    record["espeak_voice"] = plan.speaking_voice.espeak_voice
    return record


def _record(path: str, text: str | None, language: str, speaker: str | None) -> dict[str, Any]:
    return {
        "path": path,
        "text": text,
        "language": language,
        "speaker": speaker,
        "task": "asr" if text is not None else "conversation",
        "corpus": CORPUS,
    }


def _jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


README = """\
# minmo demo corpus

Synthetic speech made by `minmo demo-data OUT` with espeak-ng, so the whole pipeline can be run
and tested without downloading anything. All text was written for minmo; every file is
regenerated byte for byte from the same seed.

```
manifest.jsonl                        one JSON object per audio file:
                                      {"path", "text", "language", "speaker", "task", "corpus"},
                                      on utterances also "gender" (the voice's), on some
                                      "emotion" (happy / sad: spoken faster and higher / slower
                                      and lower), "audio_events" (["beep"] or ["noise"]: a
                                      0.3 s tone or noise burst after the speech), and
                                      "espeak_voice" (not a minmo column: ingest lists it as
                                      ignored)
utterances/<lang>/<voice>_<nnn>.wav   single-speaker read sentences (task "asr"), mostly
utterances/<lang>/<voice>_<nnn>.flac  16 kHz PCM16 WAV, some 22.05/44.1 kHz FLAC, a few 8 kHz
conversations/<stem>.wav              two-party dialogues, 16 kHz PCM16 (task "conversation"):
                                      stereo = speaker A on channel 0, B on channel 1; or mono
                                      mix; and two meetings (en_team_standup: 4 speakers A-D,
                                      en_book_club: 3 speakers A-C), mono mixes, same task;
                                      and one far-field call (en_missing_parcel_far: mono,
                                      reverberant, -40 to -25 dBFS, pink noise 10-20 dB below;
                                      its turns.json gives the room under "far_field")
conversations/<stem>.rttm             exact speaker turns (RTTM, seconds, 3 decimals)
conversations/<stem>.turns.json       the same turns with text, channel and kind:
                                      "turn", "interruption" (cuts the other speaker off; the
                                      interrupted turn ends where it was cut) or "backchannel"
                                      (a short "mm-hm" while the other speaker keeps the floor)
```

Languages: en, de, es, fr, zh (Mandarin, synthesised from pinyin). Reference turn boundaries are
where the synthesised speech starts and stops (clips were trimmed before placing). Conversations
contain pauses, overlaps, interruptions and back-channels, and a little Gaussian noise.
"""
