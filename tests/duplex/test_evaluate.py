"""The paper's duplex metrics: positive F1 at K frames and back-channel accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from minmo.duplex.evaluate import (
    EventScore,
    backchannel_accuracy,
    event_times_from_frames,
    match_events,
    score_events,
    score_samples,
)
from schemas.duplex import EventType, FrameLabel


def test_matching_is_one_to_one_within_tolerance() -> None:
    assert match_events([1.0, 2.0], [1.1, 2.5], tolerance_s=0.2) == 1
    assert match_events([1.0, 1.05], [1.02], tolerance_s=0.2) == 1  # one reference, one match
    # Greedy nearest-first would pair 1.0-1.1 and strand 1.25; the optimum pairs both.
    assert match_events([1.0, 1.25], [0.85, 1.1], tolerance_s=0.16) == 2
    assert match_events([], [1.0], 0.5) == 0


def test_f1_precision_recall() -> None:
    score = score_events([1.0, 3.0, 9.0], [1.1, 3.2], tolerance_s=0.6)
    assert (score.matched, score.predicted, score.reference) == (2, 3, 2)
    assert score.precision == pytest.approx(2 / 3)
    assert score.recall == 1.0
    assert score.f1 == pytest.approx(0.8)
    assert EventScore(0, 0, 0).f1 == 1.0
    assert EventScore(0, 2, 0).f1 == 0.0


def test_tolerance_in_frames_decides() -> None:
    hop = 0.12
    assert score_events([1.0], [1.5], 1 * hop).f1 == 0.0
    assert score_events([1.0], [1.5], 5 * hop).f1 == 1.0


def test_events_from_frames_take_the_first_frame_of_each_run() -> None:
    labels = np.array([0, 1, 1, 2, 2, 3, 0, 1, 2], dtype=np.int8)
    assert event_times_from_frames(labels, 0.5, FrameLabel.SPEAK_NOW) == [0.5, 3.5]
    assert event_times_from_frames(labels, 0.5, FrameLabel.STOP_NOW) == [2.5]


def test_backchannel_accuracy_counts_stops_within_k() -> None:
    labels = np.array([2, 2, 2, 2, 3, 0, 0, 2, 2, 2], dtype=np.int8)
    assert backchannel_accuracy([0.0], labels, 1.0, k=2) == (1, 1)
    assert backchannel_accuracy([0.0], labels, 1.0, k=4) == (0, 1)  # stops at frame 4
    assert backchannel_accuracy([0.0, 7.0], labels, 1.0, k=2) == (2, 2)


def test_pooling_over_samples_counts_missing_samples() -> None:
    ref = {
        "s1": ([(EventType.ASSISTANT_TURN_TAKING, 1.0)], np.zeros(20, np.int8)),
        "s2": ([(EventType.USER_BACKCHANNEL, 0.5)], np.zeros(20, np.int8)),
    }
    pred = {"s1": ([(EventType.ASSISTANT_TURN_TAKING, 1.2)], np.zeros(20, np.int8))}
    score = score_samples(pred, ref, hop_s=0.12, ks=(1, 5))
    assert score.f1(EventType.ASSISTANT_TURN_TAKING, 1) == 0.0
    assert score.f1(EventType.ASSISTANT_TURN_TAKING, 5) == 1.0
    assert score.f1(EventType.USER_BACKCHANNEL, 5) == 0.0  # s2 missing: its event is missed
    assert score.backchannel_accuracy(5) == 0.0
    assert "assistant_turn_taking" in score.render()
