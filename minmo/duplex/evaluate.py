"""The MinMo paper's duplex metrics: positive F1 of event times at a tolerance of K frames, and
back-channel accuracy.

Used two ways: to score a trained full-duplex predictor against reference labels, and to check
the labelling pipeline itself (labels from diarized turns against labels from reference turns).

* Positive F1 at K: predicted and reference times of one event type are matched one to one
  (optimal assignment, |t_pred - t_ref| <= K * hop); precision = matches / predictions,
  recall = matches / references. With no references and no predictions F1 is 1 (nothing to
  find, nothing claimed).
* Back-channel accuracy: the share of reference user back-channels at which the predicted labels
  keep the assistant talking, i.e. no stop_now frame from the back-channel's frame through K
  frames later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from minmo.duplex.labels import (
    DuplexLabelConfig,
    Span,
    analyse,
    events_for,
    frame_labels,
    role_conversation,
)
from schemas.duplex import EventType, FrameLabel

DEFAULT_KS = (1, 5, 10)


@dataclass(frozen=True)
class EventScore:
    matched: int
    predicted: int
    reference: int

    @property
    def precision(self) -> float:
        return self.matched / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.matched / self.reference if self.reference else 1.0

    @property
    def f1(self) -> float:
        if not self.predicted and not self.reference:
            return 1.0
        total = self.predicted + self.reference
        return 2 * self.matched / total

    def __add__(self, other: EventScore) -> EventScore:
        return EventScore(
            self.matched + other.matched,
            self.predicted + other.predicted,
            self.reference + other.reference,
        )


def match_events(predicted: Sequence[float], reference: Sequence[float], tolerance_s: float) -> int:
    """How many predicted times can be paired one to one with reference times within tolerance."""
    if not predicted or not reference:
        return 0
    from scipy.optimize import linear_sum_assignment

    pred = np.asarray(predicted, dtype=np.float64)[:, None]
    ref = np.asarray(reference, dtype=np.float64)[None, :]
    distance = np.abs(pred - ref)
    feasible = distance <= tolerance_s + 1e-9
    if not feasible.any():
        return 0
    # Maximise matches first, closeness second: infeasible pairs cost more than any feasible set.
    cost = np.where(feasible, distance / (tolerance_s + 1.0), len(pred) + len(ref[0]) + 1.0)
    rows, cols = linear_sum_assignment(cost)
    return int(feasible[rows, cols].sum())


def score_events(
    predicted: Sequence[float], reference: Sequence[float], tolerance_s: float
) -> EventScore:
    return EventScore(
        match_events(predicted, reference, tolerance_s), len(predicted), len(reference)
    )


def event_times_from_frames(labels: np.ndarray, hop_s: float, label: FrameLabel) -> list[float]:
    """Times of the first frame of each run of `label`: a predictor's decisions as events."""
    hits = np.flatnonzero(np.asarray(labels) == int(label))
    if hits.size == 0:
        return []
    starts = hits[np.concatenate(([True], np.diff(hits) > 1))]
    return [float(i * hop_s) for i in starts]


def backchannel_accuracy(
    backchannel_times: Iterable[float], predicted_labels: np.ndarray, hop_s: float, k: int
) -> tuple[int, int]:
    """(correct, total) reference back-channels at which the prediction does not stop."""
    labels = np.asarray(predicted_labels)
    correct = total = 0
    for time_s in backchannel_times:
        total += 1
        first = min(len(labels) - 1, max(0, math.floor(time_s / hop_s + 1e-9)))
        window = labels[first : first + k + 1]
        correct += int(not np.any(window == int(FrameLabel.STOP_NOW)))
    return correct, total


@dataclass
class DuplexScore:
    """Scores pooled over samples: per event type and K, plus back-channel accuracy per K."""

    events: dict[tuple[EventType, int], EventScore]
    backchannel: dict[int, tuple[int, int]]

    def f1(self, event_type: EventType, k: int) -> float:
        return self.events[(event_type, k)].f1

    def backchannel_accuracy(self, k: int) -> float:
        correct, total = self.backchannel[k]
        return correct / total if total else 1.0

    def render(self) -> str:
        ks = sorted({k for _, k in self.events})
        lines = ["event type               " + "".join(f"  F1@{k:<3}" for k in ks)]
        for event_type in EventType:
            cells = "".join(f"  {self.f1(event_type, k):6.3f}" for k in ks)
            lines.append(f"{event_type.value:<25}{cells}")
        cells = "".join(f"  {self.backchannel_accuracy(k):6.3f}" for k in ks)
        lines.append(f"{'back-channel accuracy':<25}{cells}")
        return "\n".join(lines)


def score_samples(
    predicted: Mapping[str, tuple[Sequence[tuple[EventType, float]], np.ndarray]],
    reference: Mapping[str, tuple[Sequence[tuple[EventType, float]], np.ndarray]],
    hop_s: float,
    ks: Sequence[int] = DEFAULT_KS,
) -> DuplexScore:
    """Pool scores over samples: `{sample_id: ([(event type, time)], frame labels)}` each.

    A sample only in the reference counts every one of its events as missed; one only in the
    prediction counts every event as a false alarm.
    """
    events = {(t, k): EventScore(0, 0, 0) for t in EventType for k in ks}
    backchannel = {k: (0, 0) for k in ks}
    for sample_id in sorted(set(predicted) | set(reference)):
        pred_events, pred_labels = predicted.get(sample_id, ([], np.zeros(0, np.int8)))
        ref_events, _ = reference.get(sample_id, ([], np.zeros(0, np.int8)))
        for event_type in EventType:
            pred = [t for e, t in pred_events if e is event_type]
            ref = [t for e, t in ref_events if e is event_type]
            for k in ks:
                events[(event_type, k)] += score_events(pred, ref, k * hop_s)
        ref_bc = [t for e, t in ref_events if e is EventType.USER_BACKCHANNEL]
        for k in ks:
            if len(pred_labels):
                c, n = backchannel_accuracy(ref_bc, pred_labels, hop_s, k)
            else:
                c, n = 0, len(ref_bc)
            backchannel[k] = (backchannel[k][0] + c, backchannel[k][1] + n)
    return DuplexScore(events, backchannel)


def map_speakers(hypothesis: Sequence[Span], reference: Sequence[Span]) -> dict[str, str]:
    """Hypothesis speaker -> reference speaker, maximising the seconds of speech they share
    (the optimal one-to-one mapping DER uses). Unmapped hypothesis speakers keep their name."""
    from scipy.optimize import linear_sum_assignment

    hyp_names = sorted({s.speaker for s in hypothesis})
    ref_names = sorted({s.speaker for s in reference})
    shared = np.zeros((len(hyp_names), len(ref_names)))
    for h in hypothesis:
        for r in reference:
            both = min(h.end_s, r.end_s) - max(h.start_s, r.start_s)
            if both > 0:
                shared[hyp_names.index(h.speaker), ref_names.index(r.speaker)] += both
    rows, cols = linear_sum_assignment(-shared)
    return {hyp_names[i]: ref_names[j] for i, j in zip(rows, cols, strict=True)}


def label_sample_set(
    turns: Sequence[Span], recording_id: str, duration_s: float, config: DuplexLabelConfig
) -> dict[str, tuple[list[tuple[EventType, float]], np.ndarray]]:
    """Every role assignment of one conversation (two-party or a meeting, each speaker the user
    once): {user speaker: (events, frame labels)}."""
    out = {}
    for user in analyse(turns, config).speakers:
        conversation = role_conversation(turns, user, config)
        events = events_for(conversation, user, recording_id, config)
        labels = frame_labels(conversation, user, events, duration_s, config.hop_s)
        out[user] = ([(e.event_type, e.time_s) for e in events], labels)
    return out


def label_agreement(
    conversations: Iterable[tuple[str, float, Sequence[Span], Sequence[Span]]],
    config: DuplexLabelConfig,
    ks: Sequence[int] = DEFAULT_KS,
) -> DuplexScore:
    """Labels from diarized turns scored against labels from reference turns.

    `conversations` yields (recording id, duration, diarized turns, reference turns). Diarized
    speakers are renamed to the reference speakers they match best first, so both sides draw
    the same seeded user gaps: the comparison measures diarization, not the random draw.
    """
    predicted: dict[str, tuple[list[tuple[EventType, float]], np.ndarray]] = {}
    reference: dict[str, tuple[list[tuple[EventType, float]], np.ndarray]] = {}
    for rid, duration_s, hyp, ref in conversations:
        names = map_speakers(hyp, ref)
        renamed = [Span(names.get(s.speaker, s.speaker), s.start_s, s.end_s) for s in hyp]
        for user, sample in label_sample_set(ref, rid, duration_s, config).items():
            reference[f"{rid}-u{user}"] = sample
        try:
            hyp_samples = label_sample_set(renamed, rid, duration_s, config)
        except ValueError:  # one speaker only: every reference event of it is missed
            hyp_samples = {}
        for user, sample in hyp_samples.items():
            predicted[f"{rid}-u{user}"] = sample
    return score_samples(predicted, reference, config.hop_s, ks)
