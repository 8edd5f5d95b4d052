"""What every diarization backend returns, and how it refuses input it cannot diarize.

A backend is a callable `(audio, hints) -> list[SpeakerSegment]` over float32 audio shaped
(channels, samples) at 16 kHz. Overlap is represented by segments of different speakers that
overlap in time; nothing is flattened to one speaker per instant.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SpeakerSegment:
    """One stretch of one speaker's speech. `speaker` is local to the recording ("ch0", "spk1").

    `channel` is the audio channel the speech is heard on (0 for mono); `confidence` in [0, 1]
    is the backend's own certainty (VAD probability, cluster margin, ...), documented per backend.
    """

    speaker: str
    channel: int
    start_s: float
    end_s: float
    confidence: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class SpeakerHints:
    """Speaker-count hints: an exact count, or bounds for the backend's own estimate."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None


class DiarizationRejected(ValueError):
    """Input a backend cannot diarize (no speech, one channel given to `channels`, one speaker in
    a conversation). `reason` is a quarantine ReasonCode value; the step quarantines, never
    crashes."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def merge_close(segments: Iterable[SpeakerSegment], max_gap_s: float) -> list[SpeakerSegment]:
    """Join consecutive segments of the same speaker separated by less than `max_gap_s`.

    Why: VAD splits a speaker's sentence at every comma-length pause, while diarization
    references (and turn-taking) treat such pauses as inside one stretch of speech. The merged
    segment's confidence is the duration-weighted mean of its parts.
    """
    by_speaker: dict[str, list[SpeakerSegment]] = {}
    for seg in sorted(segments, key=lambda s: (s.speaker, s.start_s)):
        by_speaker.setdefault(seg.speaker, []).append(seg)
    merged: list[SpeakerSegment] = []
    for own in by_speaker.values():
        current = own[0]
        for seg in own[1:]:
            if seg.start_s - current.end_s < max_gap_s:
                total = current.duration_s + seg.duration_s
                weight = (
                    (current.confidence * current.duration_s + seg.confidence * seg.duration_s)
                    / total
                    if total > 0
                    else current.confidence
                )
                current = SpeakerSegment(
                    current.speaker,
                    current.channel,
                    current.start_s,
                    max(current.end_s, seg.end_s),
                    weight,
                )
            else:
                merged.append(current)
                current = seg
        merged.append(current)
    return sorted(merged, key=lambda s: (s.start_s, s.speaker))
