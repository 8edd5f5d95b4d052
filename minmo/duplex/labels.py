"""Speaker turns of a conversation (two parties or a meeting) -> full-duplex events and frame
labels.

The rules are the MinMo paper's heuristics (arXiv 2501.06282, stage 4), made precise here:

1. **Turns.** A speaker's diarized segments (inter-pausal units, IPUs) separated by less than
   `pause_s` form one turn.
2. **Back-channels.** A turn no longer than `backchannel_max_s` is a back-channel when the other
   speaker is talking around it: they have speech within `backchannel_window_s` before it starts
   and keep talking within `backchannel_window_s` after it ends. It does not take the floor.
3. **The floor.** The remaining turns, in order of start, pass the floor only when the newcomer
   outlasts the holder: a turn of the other speaker that ends before the holder's turn does (a
   failed interruption, a long aside) leaves the floor where it was.
4. **Events**, for one choice of which speaker plays the user (the other is the assistant):
   * assistant turn-taking: at the end of the user's turn, when the floor passes to the assistant;
   * user turn-taking: when the floor passes to the user. A user who cuts into the assistant's
     turn (a barge-in), or starts within `immediate_s` of its end, does so at their real start;
     otherwise the user starts a gap T after the assistant's turn ends, T ~ N(0.6 s, 0.4^2 s^2)
     clipped at 0. T is drawn from a generator seeded by (recording, user side, seed), one
     draw per hand-over to the user in order (also for those that keep the real start, so a
     hand-over changing kind does not shift later draws): reruns are identical;
   * user back-channel: at the start of each user back-channel inside the assistant's floor.
5. **Meetings** (N > 2 speakers). Each speaker plays the user once; every other speaker stands
   for the assistant side. `role_conversation` relabels the other speakers' IPUs as one
   assistant-side speaker named by `assistant_side_name` (their names sorted, joined with "+",
   e.g. "spk1+spk2"; with two speakers it is just the other speaker's name) and unions their
   overlapping speech into one track; rules 1-4 then run unchanged on that two-party view. So a
   hand-over between two assistant-side speakers is no event (the assistant side keeps the
   floor); another speaker's "mm-hm" inside the user's turn is the assistant side's own
   back-channel; the user's back-channel needs *any* other speaker talking around it. With two
   speakers the view is the conversation itself, so two-party labels are unchanged.
   `analyse` on all N speakers (the floor passes between any two of them, a back-channel needs
   any other speaker around it) describes the conversation as a whole: its turns, back-channels
   and transfers are the step's summary figures, never a sample's labels.
6. **Frame labels** (`schemas.duplex.FrameLabel`): keep_speaking while the assistant holds the
   floor and until its speech in that floor ends, speak_now on the frame of each assistant
   turn-taking event, stop_now on the frame of each user turn-taking event, listen elsewhere.

Why these defaults: `pause_s` = 0.5 s joins the comma-length pauses inside a sentence but not the
gap before a new thought (telephone-speech studies put within-turn pauses mostly under 0.5 s);
`backchannel_max_s` = 1.0 s covers "mm-hm", "yeah", "right, right" (Fisher back-channels are
mostly 0.2-0.8 s) but not a short answer with content; `backchannel_window_s` = 1.0 s lets the
other speaker pause briefly around the back-channel, as they commonly do. `immediate_s` = 0.2 s:
a start that soon after the other's end is faster than a reaction (latching: the modal gap in
human conversation is about 0.2 s, planned during the other's turn), so the real start is kept;
it also makes labels robust to diarizers that give one speaker per instant, which cut a short
gap or an overlapped hand-over into two abutting segments.
The default hop is
`schemas.units.LLM_HOP_S` (0.12 s), the LLM's input frame rate after MinMo's input projector.

Pure: turns in, events and labels out; no I/O.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from minmo.config import ConfigError
from schemas.duplex import EventType, FrameLabel
from schemas.units import LLM_HOP_S

GAP_MEAN_S = 0.6
GAP_STD_S = 0.4


@dataclass(frozen=True)
class DuplexLabelConfig:
    """Thresholds of the turn-taking heuristics; see the module docstring for the defaults."""

    pause_s: float = 0.5
    """Pauses shorter than this join one turn."""
    backchannel_max_s: float = 1.0
    """The longest back-channel."""
    backchannel_window_s: float = 1.0
    """The other speaker talks this close before and after a back-channel."""
    hop_s: float = LLM_HOP_S
    """Frame hop of the labels (the LLM's input rate)."""
    gap_mean_s: float = GAP_MEAN_S
    """Mean of the drawn gap before a user turn-taking event (seconds, normal distribution)."""
    gap_std_s: float = GAP_STD_S
    """Standard deviation of that gap."""
    seed: int = 0
    """Seed of the user turn-taking gaps."""
    immediate_s: float = 0.2
    """A start this soon after the other speaker's end is latching: its real start is kept."""

    def __post_init__(self) -> None:
        if self.hop_s <= 0:
            raise ConfigError(f"hop_s must be > 0, got {self.hop_s}")
        if min(self.pause_s, self.backchannel_max_s, self.backchannel_window_s) < 0:
            raise ConfigError("pause and back-channel thresholds must be >= 0")


@dataclass(frozen=True)
class Span:
    """One speaker's speech from `start_s` to `end_s`: an IPU or a turn."""

    speaker: str
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class FloorTransfer:
    """The floor passes from `previous` (whose turn ends at `previous_end_s`) to `speaker`."""

    previous: str
    speaker: str
    previous_end_s: float
    start_s: float

    @property
    def overlapped(self) -> bool:
        return self.start_s < self.previous_end_s


@dataclass(frozen=True)
class Event:
    event_type: EventType
    time_s: float
    gap_s: float | None = None
    barge_in: bool = False


@dataclass
class Conversation:
    """A conversation analysed once (turns, back-channels, floor), labelled per role choice."""

    speakers: tuple[str, ...]  # two in a role view (user, assistant side); N >= 2 as a whole
    turns: list[Span]
    backchannels: list[Span]
    floor_turns: list[Span]  # turns that hold or take the floor, back-channels removed
    transfers: list[FloorTransfer]
    kept_floor: list[Span] = field(default_factory=list)  # long overlaps that did not take it


def join_turns(ipus: Iterable[Span], pause_s: float) -> list[Span]:
    """Join each speaker's IPUs separated by less than `pause_s` into turns."""
    turns: list[Span] = []
    by_speaker: dict[str, list[Span]] = {}
    for ipu in sorted(ipus, key=lambda s: (s.speaker, s.start_s, s.end_s)):
        by_speaker.setdefault(ipu.speaker, []).append(ipu)
    for own in by_speaker.values():
        current = own[0]
        for ipu in own[1:]:
            if ipu.start_s - current.end_s < pause_s:
                current = Span(current.speaker, current.start_s, max(current.end_s, ipu.end_s))
            else:
                turns.append(current)
                current = ipu
        turns.append(current)
    return sorted(turns, key=lambda s: (s.start_s, s.speaker))


def is_backchannel(turn: Span, other: Sequence[Span], config: DuplexLabelConfig) -> bool:
    """A short turn with the other speaker(s) talking just before it starts and on past its end
    (`other`: every other speaker's turns; in a meeting, any of them may be the one talking)."""
    if turn.duration_s > config.backchannel_max_s:
        return False
    window = config.backchannel_window_s
    before = any(s.start_s < turn.start_s and s.end_s > turn.start_s - window for s in other)
    after = any(s.end_s > turn.end_s and s.start_s < turn.end_s + window for s in other)
    return before and after


def analyse(ipus: Iterable[Span], config: DuplexLabelConfig) -> Conversation:
    """Turns, back-channels and floor transfers of a conversation of 2 or more speakers.

    With two speakers (a call, or a meeting's role view from `role_conversation`) this is what
    `events_for` labels; with more it describes the meeting as a whole (rule 5)."""
    ipus = [s for s in ipus if s.end_s > s.start_s]
    speakers = tuple(sorted({s.speaker for s in ipus}))
    if len(speakers) < 2:
        raise ValueError(f"a conversation needs at least 2 speakers, got {list(speakers)}")
    turns = join_turns(ipus, config.pause_s)
    backchannels = [
        t for t in turns if is_backchannel(t, [o for o in turns if o.speaker != t.speaker], config)
    ]
    floor_turns = [t for t in turns if t not in backchannels]
    transfers: list[FloorTransfer] = []
    kept: list[Span] = []
    holder: str | None = None
    holder_end = 0.0
    for turn in floor_turns:
        if holder is None or turn.speaker == holder:
            holder = turn.speaker
            holder_end = max(holder_end, turn.end_s)
        elif turn.end_s <= holder_end:
            kept.append(turn)
        else:
            transfers.append(FloorTransfer(holder, turn.speaker, holder_end, turn.start_s))
            holder, holder_end = turn.speaker, turn.end_s
    return Conversation(speakers, turns, backchannels, floor_turns, transfers, kept)  # type: ignore[arg-type]


def assistant_side_name(speakers: Iterable[str], user: str) -> str:
    """The name of everyone but `user`: the other speakers sorted and joined with "+" (with two
    speakers, the other one's own name). Label rows carry it as `assistant_speaker`."""
    others = sorted(set(speakers) - {user})
    if not others or user not in set(speakers):
        raise ValueError(f"{user!r} is not one of at least 2 speakers {sorted(set(speakers))}")
    return "+".join(others)


def assistant_side(ipus: Iterable[Span], user: str) -> list[Span]:
    """`user`'s IPUs as they are, every other speaker's relabelled as one assistant-side speaker
    (`assistant_side_name`), overlapping or abutting stretches of theirs unioned into one."""
    ipus = [s for s in ipus if s.end_s > s.start_s]
    name = assistant_side_name({s.speaker for s in ipus}, user)
    own = [s for s in ipus if s.speaker == user]
    merged: list[Span] = []
    for s in sorted((s for s in ipus if s.speaker != user), key=lambda s: (s.start_s, s.end_s)):
        if merged and s.start_s <= merged[-1].end_s:
            merged[-1] = Span(name, merged[-1].start_s, max(merged[-1].end_s, s.end_s))
        else:
            merged.append(Span(name, s.start_s, s.end_s))
    return sorted(own + merged, key=lambda s: (s.start_s, s.speaker))


def role_conversation(ipus: Iterable[Span], user: str, config: DuplexLabelConfig) -> Conversation:
    """The two-party view in which `user` plays the user and everyone else the assistant side
    (rule 5): what `events_for` and `frame_labels` label for that sample."""
    return analyse(assistant_side(ipus, user), config)


def gap_generator(recording_id: str, user: str, seed: int) -> np.random.Generator:
    """The stream of one sample's user turn-taking gaps: same inputs, same draws, every rerun."""
    digest = hashlib.sha256(f"{recording_id}|{user}|{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def draw_gap(rng: np.random.Generator, config: DuplexLabelConfig) -> float:
    """T ~ N(gap_mean_s, gap_std_s^2), clipped at 0."""
    return max(0.0, float(rng.normal(config.gap_mean_s, config.gap_std_s)))


def events_for(
    conversation: Conversation, user: str, recording_id: str, config: DuplexLabelConfig
) -> list[Event]:
    """The duplex events when `user` plays the user and the other speaker the assistant.

    `conversation` must be two-party: a call, or a meeting's `role_conversation` for `user` (on
    a whole meeting a hand-over between two others would read as the assistant's)."""
    if user not in conversation.speakers:
        raise ValueError(f"{user!r} is not a speaker of this conversation")
    if len(conversation.speakers) != 2:
        raise ValueError(
            f"events need a two-party view, got speakers {list(conversation.speakers)}: "
            "label a meeting through role_conversation(ipus, user, config)"
        )
    assistant = next(s for s in conversation.speakers if s != user)
    rng = gap_generator(recording_id, user, config.seed)
    events: list[Event] = []
    for transfer in conversation.transfers:
        if transfer.speaker == assistant:
            events.append(Event(EventType.ASSISTANT_TURN_TAKING, transfer.previous_end_s))
            continue
        gap = draw_gap(rng, config)
        if transfer.start_s < transfer.previous_end_s + config.immediate_s:
            barge_in = transfer.overlapped
            events.append(Event(EventType.USER_TURN_TAKING, transfer.start_s, barge_in=barge_in))
        else:
            time_s = transfer.previous_end_s + gap
            events.append(Event(EventType.USER_TURN_TAKING, time_s, gap_s=gap))
    for bc in conversation.backchannels:
        if bc.speaker == user:
            events.append(Event(EventType.USER_BACKCHANNEL, bc.start_s))
    return sorted(events, key=lambda e: (e.time_s, e.event_type.value))


def assistant_floors(
    conversation: Conversation, assistant: str, events: Sequence[Event]
) -> list[tuple[float, float]]:
    """Stretches in which the assistant holds the floor and is still talking.

    A floor starts at the assistant's speak-now event (or at its first turn, when it opens the
    conversation) and lasts until its own speech in that floor ends or the user takes the floor,
    whichever comes first.
    """
    starts = [e.time_s for e in events if e.event_type is EventType.ASSISTANT_TURN_TAKING]
    stops = sorted(e.time_s for e in events if e.event_type is EventType.USER_TURN_TAKING)
    first = conversation.floor_turns[0] if conversation.floor_turns else None
    if first is not None and first.speaker == assistant:
        starts.insert(0, first.start_s)
    own = [t for t in conversation.floor_turns if t.speaker == assistant]
    floors = []
    for start in sorted(starts):
        stop = next((s for s in stops if s > start), math.inf)
        speech_end = max(
            (t.end_s for t in own if t.end_s > start and t.start_s < stop), default=start
        )
        end = min(stop, speech_end)
        if end > start:
            floors.append((start, end))
    return floors


def frame_labels(
    conversation: Conversation,
    user: str,
    events: Sequence[Event],
    duration_s: float,
    hop_s: float,
) -> np.ndarray:
    """Per-frame FrameLabel values (int8) over `duration_s`; frame i covers [i*hop, (i+1)*hop)."""
    assistant = next(s for s in conversation.speakers if s != user)
    n = max(1, math.ceil(duration_s / hop_s - 1e-9))
    labels = np.full(n, FrameLabel.LISTEN, dtype=np.int8)
    for start, end in assistant_floors(conversation, assistant, events):
        first, last = _frame(start, hop_s, n), math.ceil(end / hop_s - 1e-9)
        labels[first : min(last, n)] = FrameLabel.KEEP_SPEAKING
    for event in sorted(events, key=lambda e: e.time_s):
        if event.event_type is EventType.ASSISTANT_TURN_TAKING:
            labels[_frame(event.time_s, hop_s, n)] = FrameLabel.SPEAK_NOW
        elif event.event_type is EventType.USER_TURN_TAKING:
            labels[_frame(event.time_s, hop_s, n)] = FrameLabel.STOP_NOW
    return labels


def _frame(time_s: float, hop_s: float, n: int) -> int:
    return min(n - 1, max(0, math.floor(time_s / hop_s + 1e-9)))


# ---- assistant activity (an input of the stage-4 sample, schemas/duplex.py) -----------------


def n_frames(duration_s: float, hop_s: float) -> int:
    """Frames of a conversation's label track: frame i covers [i*hop, (i+1)*hop), at least one."""
    return max(1, math.ceil(duration_s / hop_s - 1e-9))


def assistant_activity(
    ipus: Iterable[Span], user: str, duration_s: float, hop_s: float
) -> np.ndarray:
    """Per-frame 0/1 (int8, as long as `frame_labels`' track): 1 where any speaker other than
    `user` (the assistant side) has speech overlapping the frame.

    From the diarized segments as they are, not the joined turns: a deployed system knows exactly
    when it itself is talking, pauses included, so the track marks its sound, not its floor."""
    n = n_frames(duration_s, hop_s)
    activity = np.zeros(n, dtype=np.int8)
    for span in ipus:
        if span.speaker == user or span.end_s <= span.start_s:
            continue
        first = min(n, max(0, math.floor(span.start_s / hop_s + 1e-9)))
        last = min(n, max(0, math.ceil(span.end_s / hop_s - 1e-9)))
        activity[first:last] = 1
    return activity
