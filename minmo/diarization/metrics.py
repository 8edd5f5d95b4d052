"""Diarization error rate (DER) and Jaccard error rate (JER) of a backend against a reference.

Owns: reading RTTM references, scoring one recording with pyannote.metrics, and pooling the
scores of many recordings. Must not: run a backend or decide what DER is good enough.

`collar` follows pyannote.metrics: it is the *total* width of the no-score zone centred on every
reference boundary, i.e. `collar=0.25` forgives 0.125 s either side of a boundary. NIST md-eval's
`-c 0.25` (0.25 s either side) is `collar=0.5` here.

pyannote is imported lazily (inside `score`): importing it costs seconds and must not happen when
the package is imported. Its telemetry is switched off (PYANNOTE_METRICS_ENABLED=false) unless the
environment already says otherwise.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from minmo.io.paths import Pathlike
from schemas.units import Seconds

Turn = tuple[str, Seconds, Seconds]  # (speaker, start_s, end_s)


@dataclass(frozen=True)
class DiarizationScore:
    """Error seconds of one recording (or pooled recordings) and the rates made of them.

    der: (missed_s + false_alarm_s + confusion_s) / total_s, speaker labels mapped optimally.
    jer: Jaccard error rate, the mean over reference speakers of (miss + fa) / union of the
    speaker's reference and mapped hypothesis time; 1.0 for a reference with no speaker.
    total_s: reference speech seconds scored (overlapped speech counts once per speaker), after
    collars, overlap skipping and the UEM are applied.
    """

    der: float
    jer: float
    missed_s: Seconds
    false_alarm_s: Seconds
    confusion_s: Seconds
    total_s: Seconds

    @property
    def error_s(self) -> Seconds:
        return self.missed_s + self.false_alarm_s + self.confusion_s

    @classmethod
    def combine(cls, scores: Iterable[DiarizationScore]) -> DiarizationScore:
        """Pool recordings: DER from summed seconds (as md-eval over a file list), JER as the
        mean of the recordings' JERs weighted by their reference seconds."""
        scores = list(scores)
        if not scores:
            raise ValueError("combine() needs at least one DiarizationScore")
        total = sum(s.total_s for s in scores)
        missed = sum(s.missed_s for s in scores)
        false_alarm = sum(s.false_alarm_s for s in scores)
        confusion = sum(s.confusion_s for s in scores)
        if total > 0:
            jer = sum(s.jer * s.total_s for s in scores) / total
        else:
            jer = sum(s.jer for s in scores) / len(scores)
        return cls(
            der=_rate(missed + false_alarm + confusion, total),
            jer=jer,
            missed_s=missed,
            false_alarm_s=false_alarm,
            confusion_s=confusion,
            total_s=total,
        )


def _rate(error: Seconds, total: Seconds) -> float:
    """pyannote's convention when nothing is to be found: 0 without error, 1 with."""
    if total > 0:
        return error / total
    return 0.0 if error == 0 else 1.0


def read_rttm(path: Pathlike) -> dict[str, list[Turn]]:
    """RTTM `SPEAKER` lines -> {uri: [(speaker, start_s, end_s), ...]} in file order.

    Fields: SPEAKER uri channel start duration <NA> <NA> speaker <NA> <NA>; other line types
    and `;;` comments are skipped.
    """
    turns: dict[str, list[Turn]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise ValueError(f"{path}:{number}: SPEAKER line needs at least 8 fields: {line!r}")
        start, duration = float(fields[3]), float(fields[4])
        turns.setdefault(fields[1], []).append((fields[7], start, start + duration))
    return turns


class Timed(Protocol):
    """Anything with a speaker and a time span: SpeakerSegment, minmo.duplex.labels.Span, ..."""

    speaker: str
    start_s: float
    end_s: float


def _as_turns(segments: Iterable[Turn | Timed], what: str) -> list[Turn]:
    turns: list[Turn] = []
    for seg in segments:
        if isinstance(seg, tuple):
            speaker, start, end = seg
        else:
            speaker, start, end = seg.speaker, seg.start_s, seg.end_s
        turn = (str(speaker), float(start), float(end))
        if not (math.isfinite(turn[1]) and math.isfinite(turn[2])) or turn[2] < turn[1]:
            raise ValueError(f"{what} segment {turn} must have finite start_s <= end_s")
        turns.append(turn)
    return turns


def _annotation(turns: list[Turn], uri: str):  # -> pyannote.core.Annotation
    from pyannote.core import Annotation, Segment

    annotation = Annotation(uri=uri)
    for track, (speaker, start, end) in enumerate(turns):
        if end > start:  # pyannote treats empty segments as absent; skip them explicitly
            # One track per turn: a speaker's overlapping turns must not overwrite each other.
            annotation[Segment(start, end), track] = speaker
    return annotation


def score(
    reference: Iterable[Turn | Timed],
    hypothesis: Iterable[Turn | Timed],
    collar: Seconds = 0.25,
    skip_overlap: bool = False,
    uem: Sequence[tuple[Seconds, Seconds]] | None = None,
) -> DiarizationScore:
    """DER and JER of `hypothesis` against `reference` for one recording.

    reference, hypothesis: (speaker, start_s, end_s) tuples, or objects with those attributes
    (SpeakerSegment, duplex Span); speaker names need not match (the optimal one-to-one mapping
    is found). collar: total width in seconds of the zone around each reference boundary that is
    not scored (pyannote's convention, see the module docstring). skip_overlap: do not score
    where reference speakers overlap. uem: (start_s, end_s) spans to score; None scores the union
    of both annotations' extents.
    """
    ref_turns = _as_turns(reference, "reference")
    hyp_turns = _as_turns(hypothesis, "hypothesis")
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate, JaccardErrorRate

    ref = _annotation(ref_turns, "recording")
    hyp = _annotation(hyp_turns, "recording")
    timeline = None
    if uem is not None:
        timeline = Timeline([Segment(float(a), float(b)) for a, b in uem if b > a], uri="recording")
    der_metric = DiarizationErrorRate(collar=collar, skip_overlap=skip_overlap)
    jer_metric = JaccardErrorRate(collar=collar, skip_overlap=skip_overlap)
    with warnings.catch_warnings():  # "uem was approximated": the documented default above
        warnings.simplefilter("ignore", UserWarning)
        detail = der_metric(ref, hyp, uem=timeline, detailed=True)
        jer = jer_metric(ref, hyp, uem=timeline)
    missed = float(detail["missed detection"])
    false_alarm = float(detail["false alarm"])
    confusion = float(detail["confusion"])
    total = float(detail["total"])
    return DiarizationScore(
        der=_rate(missed + false_alarm + confusion, total),
        jer=float(jer),
        missed_s=missed,
        false_alarm_s=false_alarm,
        confusion_s=confusion,
        total_s=total,
    )
