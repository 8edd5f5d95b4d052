"""Hand-made turn sequences with exactly known events and frame labels.

Most cases use a 0.5 s hop (easy frame arithmetic) and gap_std_s = 0, so the user's drawn gap T
is exactly its mean, 0.6 s; the seeded draw itself is tested separately.
"""

from __future__ import annotations

import numpy as np
import pytest

from minmo.duplex.labels import (
    DuplexLabelConfig,
    Span,
    analyse,
    assistant_side,
    assistant_side_name,
    draw_gap,
    events_for,
    frame_labels,
    gap_generator,
    join_turns,
    role_conversation,
)
from schemas.duplex import EventType

FIXED = DuplexLabelConfig(gap_std_s=0.0, hop_s=0.5)
ATT, UTT, UBC = (
    EventType.ASSISTANT_TURN_TAKING,
    EventType.USER_TURN_TAKING,
    EventType.USER_BACKCHANNEL,
)


def spans(*items: tuple[str, float, float]) -> list[Span]:
    return [Span(*item) for item in items]


def label(ipus: list[Span], user: str, duration_s: float, config: DuplexLabelConfig = FIXED):
    conversation = analyse(ipus, config)
    events = events_for(conversation, user, "rec", config)
    labels = frame_labels(conversation, user, events, duration_s, config.hop_s)
    return conversation, [(e.event_type, round(e.time_s, 3)) for e in events], labels.tolist()


def test_plain_alternation_gives_speak_now_and_seeded_user_start() -> None:
    ipus = spans(("A", 0.0, 2.0), ("B", 2.5, 4.0), ("A", 4.6, 6.0))
    _, events, labels = label(ipus, "A", 7.0)
    assert events == [(ATT, 2.0), (UTT, 4.6)]  # B's turn ends at 4.0, A starts T = 0.6 later
    assert labels == [0, 0, 0, 0, 1, 2, 2, 2, 0, 3, 0, 0, 0, 0]
    _, events, labels = label(ipus, "B", 7.0)
    assert events == [(UTT, 2.6), (ATT, 4.0)]
    # The assistant (A) opens: it holds the floor from its first word, with no speak-now.
    assert labels == [2, 2, 2, 2, 0, 3, 0, 0, 1, 2, 2, 2, 0, 0]


def test_backchannel_does_not_take_the_floor() -> None:
    ipus = spans(("A", 0.0, 6.0), ("B", 2.0, 2.4), ("B", 7.0, 9.0))
    conversation, events, labels = label(ipus, "B", 9.0)
    assert conversation.backchannels == [Span("B", 2.0, 2.4)]
    assert events == [(UBC, 2.0), (UTT, 6.6)]
    assert labels[:12] == [2] * 12  # the assistant keeps talking through the "mm-hm"
    assert labels[13] == 3
    # With A as the user, B's "mm-hm" is the assistant's own back-channel: no user event.
    _, events, _ = label(ipus, "A", 9.0)
    assert events == [(ATT, 6.0)]


def test_backchannel_in_the_speakers_pause() -> None:
    ipus = spans(("A", 0.0, 3.0), ("B", 3.2, 3.5), ("A", 3.9, 6.0))
    conversation, events, _ = label(ipus, "B", 6.5)
    assert conversation.backchannels == [Span("B", 3.2, 3.5)]
    assert conversation.transfers == []
    assert events == [(UBC, 3.2)]


def test_short_answer_that_the_other_does_not_talk_over_takes_the_floor() -> None:
    ipus = spans(("A", 0.0, 3.0), ("B", 3.3, 3.8), ("A", 5.5, 7.0))
    conversation, events, _ = label(ipus, "B", 7.5)
    assert conversation.backchannels == []
    assert events == [(UTT, 3.6), (ATT, 3.8)]


def test_barge_in_uses_the_real_start_and_stops_the_assistant() -> None:
    ipus = spans(("A", 0.0, 5.0), ("B", 4.0, 8.0))
    conversation, events, labels = label(ipus, "B", 8.0)
    assert conversation.transfers[0].overlapped
    assert events == [(UTT, 4.0)]
    conv_events = events_for(conversation, "B", "rec", FIXED)
    assert conv_events[0].barge_in and conv_events[0].gap_s is None
    assert labels == [2] * 8 + [3] + [0] * 7  # the assistant's floor ends when B cuts in
    _, events, labels = label(ipus, "A", 8.0)
    assert events == [(ATT, 5.0)]  # the user's (A's) turn ends at 5.0
    assert labels == [0] * 10 + [1] + [2] * 5


def test_failed_interruption_leaves_the_floor() -> None:
    ipus = spans(("A", 0.0, 8.0), ("B", 3.0, 4.5))
    conversation, events, _ = label(ipus, "B", 8.5)
    assert conversation.backchannels == []  # 1.5 s is too long for a back-channel
    assert conversation.kept_floor == [Span("B", 3.0, 4.5)]
    assert conversation.transfers == []
    assert events == []


def test_long_silence_within_one_speakers_floor_is_no_event() -> None:
    ipus = spans(("A", 0.0, 2.0), ("A", 5.0, 7.0), ("B", 8.0, 10.0))
    conversation, events, labels = label(ipus, "B", 10.0)
    assert len(conversation.turns) == 3  # A's two turns stay apart (3 s pause)
    assert events == [(UTT, 7.6)]
    # A holds the floor through its own long pause: keep_speaking runs to its last word.
    assert labels[:14] == [2] * 14 and labels[15] == 3


def test_short_pauses_join_a_turn() -> None:
    turns = join_turns(spans(("A", 0.0, 1.0), ("A", 1.3, 2.0), ("A", 2.6, 3.0)), pause_s=0.5)
    assert turns == spans(("A", 0.0, 2.0), ("A", 2.6, 3.0))


def test_overlapping_take_over_at_turn_end() -> None:
    # B starts 0.3 s before A finishes (a normal overlap at a transition): a barge-in at 3.7.
    ipus = spans(("A", 0.0, 4.0), ("B", 3.7, 6.0))
    _, events, _ = label(ipus, "B", 6.0)
    assert events == [(UTT, 3.7)]


def test_a_start_abutting_the_others_end_counts_as_a_cut_in() -> None:
    # One-speaker-per-instant diarizers cut an overlapped hand-over into abutting segments.
    ipus = spans(("A", 0.0, 4.0), ("B", 4.0, 6.0), ("A", 6.02, 8.0))
    conversation = analyse(ipus, FIXED)
    events = events_for(conversation, "B", "rec", FIXED)
    assert [(e.time_s, e.barge_in, e.gap_s) for e in events] == [
        (4.0, False, None),
        (6.0, False, None),
    ]
    events = events_for(conversation, "A", "rec", FIXED)
    assert [(e.event_type, e.time_s) for e in events] == [(ATT, 4.0), (UTT, 6.02)]


def test_needs_two_speakers() -> None:
    with pytest.raises(ValueError, match="at least 2 speakers"):
        analyse(spans(("A", 0.0, 1.0)), FIXED)
    meeting = analyse(spans(("A", 0.0, 1.0), ("B", 1.5, 2.0), ("C", 2.5, 3.0)), FIXED)
    assert meeting.speakers == ("A", "B", "C")
    with pytest.raises(ValueError, match="role_conversation"):  # a whole meeting is no role view
        events_for(meeting, "A", "rec", FIXED)


# A hand-written 3-speaker meeting (hop 0.5 s, T = 0.6 s exactly):
#   A 0.0-2.0 | B 2.8-5.0 | C 4.6-7.0 cuts in on B | A 7.8-9.0 with C's "mm-hm" 8.0-8.4 |
#   B 9.9-11.0 with A's "mm-hm" 10.0-10.3.
MEETING = spans(
    ("A", 0.0, 2.0),
    ("B", 2.8, 5.0),
    ("C", 4.6, 7.0),
    ("A", 7.8, 9.0),
    ("C", 8.0, 8.4),
    ("B", 9.9, 11.0),
    ("A", 10.0, 10.3),
)


def meeting_labels(user: str) -> tuple[list[tuple[EventType, float]], list[int]]:
    view = role_conversation(MEETING, user, FIXED)
    events = events_for(view, user, "rec", FIXED)
    labels = frame_labels(view, user, events, 11.5, FIXED.hop_s)
    return [(e.event_type, round(e.time_s, 3)) for e in events], labels.tolist()


def test_meeting_user_a_others_merge_into_one_assistant_side() -> None:
    # Assistant side = B u C: 2.8-7.0 (B hands over to C inside it: no event), C's 8.0-8.4 is
    # the assistant side's own back-channel, B 9.9-11.0. A's 10.0-10.3 is the user's
    # back-channel; A's return at 7.8 is 0.8 s after the side's 7.0: drawn start 7.0 + 0.6.
    events, labels = meeting_labels("A")
    assert events == [(ATT, 2.0), (UTT, 7.6), (ATT, 9.0), (UBC, 10.0)]
    assert labels == [0] * 4 + [1] + [2] * 9 + [0, 3, 0, 0, 1, 2, 2, 2, 0]


def test_meeting_user_b_and_c() -> None:
    # B: side = A u C; B's turn is taken by C (an overlapped hand-over to the assistant side,
    # speak-now at B's end 5.0); A 7.8-9.0 absorbs C's back-channel; A's 10.0-10.3 is the side's.
    events, _ = meeting_labels("B")
    assert events == [(UTT, 2.6), (ATT, 5.0), (UTT, 9.6)]
    # C: side = A u B; C cuts in on B at 4.6 (a barge-in at its real start), hands the floor
    # back at 7.0, and says "mm-hm" at 8.0 inside A's turn.
    view = role_conversation(MEETING, "C", FIXED)
    events_c = events_for(view, "C", "rec", FIXED)
    assert [(e.event_type, e.time_s) for e in events_c] == [(UTT, 4.6), (ATT, 7.0), (UBC, 8.0)]
    assert events_c[0].barge_in and events_c[0].gap_s is None
    assert view.speakers == ("A+B", "C")


def test_meeting_as_a_whole_and_the_assistant_side_name() -> None:
    whole = analyse(MEETING, FIXED)
    assert [(t.previous, t.speaker) for t in whole.transfers] == [
        ("A", "B"),
        ("B", "C"),
        ("C", "A"),
        ("A", "B"),
    ]
    assert whole.backchannels == spans(("C", 8.0, 8.4), ("A", 10.0, 10.3))
    assert assistant_side_name("CAB", "B") == "A+C"
    assert assistant_side_name(["x", "y"], "x") == "y"  # two-party: the other's own name
    with pytest.raises(ValueError):
        assistant_side_name(["x"], "x")
    assert assistant_side(MEETING, "A")[1:3] == spans(("B+C", 2.8, 7.0), ("A", 7.8, 9.0))


def test_two_party_role_view_is_the_conversation() -> None:
    ipus = spans(("A", 0.0, 5.0), ("B", 4.0, 8.0), ("A", 8.7, 9.0), ("B", 9.5, 12.0))
    for user in "AB":
        direct = analyse(ipus, FIXED)
        view = role_conversation(ipus, user, FIXED)
        assert view == direct
        assert events_for(view, user, "r", FIXED) == events_for(direct, user, "r", FIXED)


def test_seeded_gaps_are_reproducible_and_follow_the_distribution() -> None:
    ipus = [Span("AB"[i % 2], 2.0 * i, 2.0 * i + 1.5) for i in range(40)]
    config = DuplexLabelConfig()
    first = events_for(analyse(ipus, config), "B", "rec-1", config)
    again = events_for(analyse(ipus, config), "B", "rec-1", config)
    other = events_for(analyse(ipus, config), "B", "rec-2", config)
    assert first == again
    assert [e.time_s for e in first] != [e.time_s for e in other]
    gaps = [e.gap_s for e in first if e.event_type is UTT]
    assert len(gaps) == 20 and all(g is not None and g >= 0 for g in gaps)
    rng = gap_generator("x", "A", 0)
    draws = np.array([draw_gap(rng, config) for _ in range(20_000)])
    assert draws.min() >= 0.0
    assert abs(draws.mean() - 0.6) < 0.03  # clipping at 0 lifts the mean only slightly
    assert abs(draws.std() - 0.4) < 0.04
    # A hand-over that keeps its real start still consumes its draw: later gaps do not shift.
    near = [Span("A", 0.0, 2.0), Span("B", 2.1, 4.0), Span("A", 4.5, 6.0), Span("B", 7.0, 9.0)]
    far = [Span("A", 0.0, 2.0), Span("B", 3.0, 4.0), Span("A", 4.5, 6.0), Span("B", 7.0, 9.0)]
    last = [events_for(analyse(x, config), "B", "r", config)[-1] for x in (near, far)]
    assert last[0] == last[1] and last[0].gap_s is not None


def test_frames_cover_the_duration_at_the_hop() -> None:
    ipus = spans(("A", 0.0, 2.0), ("B", 2.5, 4.0))
    conversation = analyse(ipus, DuplexLabelConfig())
    events = events_for(conversation, "A", "r", DuplexLabelConfig())
    assert len(frame_labels(conversation, "A", events, 4.0, 0.12)) == 34  # ceil(4 / 0.12)
    assert len(frame_labels(conversation, "A", events, 3.6, 0.12)) == 30  # exact multiple
