"""Conversations (two-party) and meetings (3-4 speakers) for the demo corpus: timing, rendering
and exact references.

Owns where each trimmed clip goes on the timeline (pauses, overlaps, interruptions,
back-channels), the mixing into stereo or mono, and the RTTM / turns.json references derived
from those placements. It is pure: clips and a seeded generator in, arrays and text out; it
must not call espeak-ng or touch files (`speak.py` and `build.py` do).

Times are whole milliseconds and clips are whole 10 ms frames at 16 kHz, so every reference
boundary is exact to the sample rather than rounded from a float.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any, Literal

import numpy as np

from minmo.audio.trim import pauses, trim_silence
from minmo.demo.script import ConversationScript, Line, Phrase, SpeakerLabel
from schemas.units import SAMPLE_RATE_HZ

SAMPLES_PER_MS = SAMPLE_RATE_HZ // 1000
Kind = Literal["turn", "backchannel", "interruption"]

# The paper's user turn-taking gap, T ~ N(0.6 s, 0.4^2 s^2); clipped because a negative draw
# would be an overlap, which scripts ask for explicitly.
GAP_MEAN_S, GAP_STD_S, GAP_MIN_S, GAP_MAX_S = 0.6, 0.4, 0.12, 1.6
OVERLAP_S = (0.25, 0.7)  # next speaker starts this long before the current one finishes
INTERRUPT_LEAD_S = (0.3, 0.6)  # both talk this long before the interrupted speaker stops
LEAD_IN_S, TAIL_S = (0.3, 0.8), (0.4, 0.8)
SAME_SPEAKER_GAP_MS = 200  # one person never overlaps themself
BACKCHANNEL_MARGIN_MS = 600  # keep "mm-hm" inside the other speaker's turn, not at its edges
BACKCHANNEL_CLEAR_MS = 300  # ... and clear of the listener's own turns
BACKCHANNEL_GAIN = 0.7  # back-channels are said more quietly than turns
CLAUSE_MATCH_TOLERANCE = 0.15  # pause taken as the comma if within 15% of the clause length


@dataclass(frozen=True)
class LineClips:
    """Trimmed 16 kHz clips for one script line: the whole line, and for lines that get
    interrupted, the first clause on its own (its length locates the comma pause)."""

    full: np.ndarray
    clause: np.ndarray | None = None


@dataclass(frozen=True)
class PlacedTurn:
    """A clip at its place on the timeline; the reference is read off this, nothing else."""

    speaker: SpeakerLabel
    start_ms: int
    audio: np.ndarray  # 16 kHz mono float32, trimmed, whole 10 ms frames
    text: str
    kind: Kind

    @property
    def duration_ms(self) -> int:
        return len(self.audio) // SAMPLES_PER_MS

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.duration_ms


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _listener(line: Line, speaker: SpeakerLabel) -> SpeakerLabel:
    """Who says a line's back-channel: the script's `listener`, else (two-party) the other one."""
    if line.listener is not None:
        return line.listener
    return "B" if speaker == "A" else "A"


def first_clause(phrase: Phrase) -> Phrase:
    """The words before the comma of a line that gets interrupted (text and spoken form)."""

    def head(s: str) -> str:
        for i, ch in enumerate(s):
            if ch in ",，":
                return s[:i].strip()
        raise ValueError(f"an interrupted line needs a comma to be cut at: {s!r}")

    return Phrase(head(phrase.text), head(phrase.say) if phrase.say is not None else None)


def plan_conversation(
    script: ConversationScript,
    clips: Sequence[LineClips],
    backchannels: Mapping[SpeakerLabel, Sequence[tuple[Phrase, np.ndarray]]],
    rng: np.random.Generator,
) -> list[PlacedTurn]:
    """Place every line and back-channel; returns turns sorted by start time."""
    if len(clips) != len(script.lines):
        raise ValueError(f"{script.stem}: {len(script.lines)} lines but {len(clips)} clips")
    main = _place_main_turns(script, clips, rng)
    extra = _place_backchannels(script, main, backchannels, rng)
    turns = sorted(main + extra, key=lambda t: (t.start_ms, t.speaker))
    _check(script.stem, turns)
    return turns


def _place_main_turns(
    script: ConversationScript, clips: Sequence[LineClips], rng: np.random.Generator
) -> list[PlacedTurn]:
    turns: list[PlacedTurn] = []
    last_end: dict[SpeakerLabel, int] = {}
    for i, (line, clip) in enumerate(zip(script.lines, clips, strict=True)):
        kind: Kind = "turn"
        if i == 0:
            start = _ms(rng.uniform(*LEAD_IN_S))
        else:
            prev = turns[-1]
            if line.entry != "gap" and line.speaker == prev.speaker:
                raise ValueError(f"{script.stem} line {i}: only the other speaker can cut in")
            if line.entry == "gap":
                gap = float(np.clip(rng.normal(GAP_MEAN_S, GAP_STD_S), GAP_MIN_S, GAP_MAX_S))
                start = prev.end_ms + _ms(gap)
            elif line.entry == "overlap":
                start = max(prev.end_ms - _ms(rng.uniform(*OVERLAP_S)), prev.start_ms + 500)
            else:
                prev = _cut(prev, script.lines[i - 1], clips[i - 1], script.stem)
                turns[-1] = prev
                last_end[prev.speaker] = prev.end_ms
                start = max(prev.end_ms - _ms(rng.uniform(*INTERRUPT_LEAD_S)), prev.start_ms + 300)
                kind = "interruption"
        start = max(start, last_end.get(line.speaker, -SAME_SPEAKER_GAP_MS) + SAME_SPEAKER_GAP_MS)
        if kind == "interruption" and start >= turns[-1].end_ms:
            raise ValueError(f"{script.stem} line {i}: interruption starts after the cut turn")
        turn = PlacedTurn(line.speaker, start, clip.full, line.phrase.text, kind)
        turns.append(turn)
        last_end[line.speaker] = turn.end_ms
    return turns


def _cut(prev: PlacedTurn, line: Line, clips: LineClips, stem: str) -> PlacedTurn:
    """Stop an interrupted speaker at the pause after their first clause.

    The full clip is truncated at the internal pause nearest to where the separately spoken
    clause ends; if no pause is close enough (another espeak-ng build may phrase differently),
    the clause clip itself is used, so the reference text always matches the audio.
    """
    clause = first_clause(line.phrase)
    if clips.clause is None:
        raise ValueError(f"{stem}: interrupted line {line.phrase.text!r} has no clause clip")
    target = len(clips.clause)
    candidates = pauses(prev.audio, SAMPLE_RATE_HZ)
    audio = clips.clause
    if candidates:
        best = min(candidates, key=lambda p: abs(p - target))
        if abs(best - target) <= CLAUSE_MATCH_TOLERANCE * target:
            audio = trim_silence(prev.audio[:best], SAMPLE_RATE_HZ)
    return replace(prev, audio=audio, text=clause.text)


def _place_backchannels(
    script: ConversationScript,
    main: Sequence[PlacedTurn],
    backchannels: Mapping[SpeakerLabel, Sequence[tuple[Phrase, np.ndarray]]],
    rng: np.random.Generator,
) -> list[PlacedTurn]:
    """The listener says a short back-channel while the other speaker keeps the floor."""
    placed: list[PlacedTurn] = []
    for line, turn in zip(script.lines, main, strict=True):
        if not line.backchannel:
            continue
        listener = _listener(line, turn.speaker)
        options = backchannels[listener]
        phrase, audio = options[int(rng.integers(len(options)))]
        dur = len(audio) // SAMPLES_PER_MS
        lo = turn.start_ms + BACKCHANNEL_MARGIN_MS
        hi = turn.end_ms - BACKCHANNEL_MARGIN_MS - dur
        busy = [(t.start_ms, t.end_ms) for t in [*main, *placed] if t.speaker == listener]
        free = [
            s
            for s in range(lo, hi + 1, 10)
            if all(
                s + dur + BACKCHANNEL_CLEAR_MS <= b0 or s >= b1 + BACKCHANNEL_CLEAR_MS
                for b0, b1 in busy
            )
        ]
        if free:
            start = free[int(rng.integers(len(free)))]
            placed.append(PlacedTurn(listener, start, audio, phrase.text, "backchannel"))
    if not placed:
        raise ValueError(f"{script.stem}: no back-channel fitted; lengthen a backchannel line")
    return placed


def _check(stem: str, turns: Sequence[PlacedTurn]) -> None:
    """Invariants the references promise: no self-overlap, every turn has speech."""
    for speaker in sorted({t.speaker for t in turns}):
        own = [t for t in turns if t.speaker == speaker]
        for a, b in pairwise(own):
            if b.start_ms < a.end_ms:
                raise AssertionError(f"{stem}: speaker {speaker} overlaps themself at {b.start_ms}")
    if any(t.duration_ms <= 0 for t in turns):
        raise AssertionError(f"{stem}: empty turn")


def conversation_length_ms(turns: Sequence[PlacedTurn], rng: np.random.Generator) -> int:
    return max(t.end_ms for t in turns) + _ms(rng.uniform(*TAIL_S))


def speaker_tracks(
    turns: Sequence[PlacedTurn], length_ms: int, gains: Mapping[SpeakerLabel, float]
) -> dict[SpeakerLabel, np.ndarray]:
    """One close-talk float32 track per speaker (every key of `gains`), length_ms long."""
    n = length_ms * SAMPLES_PER_MS
    tracks = {label: np.zeros(n, np.float32) for label in gains}
    for t in turns:
        s = t.start_ms * SAMPLES_PER_MS
        gain = gains[t.speaker] * (BACKCHANNEL_GAIN if t.kind == "backchannel" else 1.0)
        tracks[t.speaker][s : s + len(t.audio)] += gain * t.audio
    return tracks


def render(
    turns: Sequence[PlacedTurn],
    length_ms: int,
    stereo: bool,
    gains: Mapping[SpeakerLabel, float],
    noise_dbfs: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Mix placed clips into (frames, channels) float32 at 16 kHz.

    Stereo keeps one speaker per channel (A = 0, B = 1), as telephone corpora like Fisher do;
    mono sums every speaker (two, or a meeting's 3-4) and scales down only if the sum would
    clip. Low Gaussian noise keeps SNR finite so ingest's level and SNR measurements have
    something real to measure. `gains` names every speaker.
    """
    tracks = speaker_tracks(turns, length_ms, gains)
    if stereo and set(tracks) != {"A", "B"}:
        raise ValueError(f"stereo is one channel per speaker of two, got {sorted(tracks)}")
    if stereo:
        out = np.stack([tracks["A"], tracks["B"]], axis=1)
    else:
        mix = np.sum(list(tracks.values()), axis=0, dtype=np.float32)
        peak = float(np.abs(mix).max())
        if peak > 0.89:
            mix *= 0.89 / peak
        out = mix[:, None]
    out = out + (10 ** (noise_dbfs / 20) * rng.standard_normal(out.shape)).astype(np.float32)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def rttm(stem: str, turns: Sequence[PlacedTurn]) -> str:
    """Standard RTTM: one SPEAKER line per turn, seconds with 3 decimals (exact: whole ms)."""
    lines = [
        f"SPEAKER {stem} 1 {t.start_ms / 1000:.3f} {t.duration_ms / 1000:.3f} "
        f"<NA> <NA> {t.speaker} <NA> <NA>"
        for t in turns
    ]
    return "\n".join(lines) + "\n"


def turns_document(
    script: ConversationScript,
    turns: Sequence[PlacedTurn],
    length_ms: int,
    voice_ids: Mapping[SpeakerLabel, str],
) -> dict[str, Any]:
    """The richer reference beside the RTTM: text and kind per turn, channel map, voices."""
    channels = {"A": 0, "B": 1} if script.stereo else None
    return {
        "recording": script.stem,
        "language": script.language,
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "duration_s": length_ms / 1000,
        "channels": channels,
        "speakers": dict(voice_ids),
        "turns": [
            {
                "speaker": t.speaker,
                "start_s": t.start_ms / 1000,
                "end_s": t.end_ms / 1000,
                "text": t.text,
                "kind": t.kind,
                "channel": channels[t.speaker] if channels else None,
            }
            for t in turns
        ],
    }
