"""Simulated two-channel duplex conversations with exact turn-taking references.

Owns where already-synthesised turns and back-channel clips go on a two-channel timeline
(hand-over gaps, overlapped hand-overs, barge-ins, back-channels), the mix, and the references
read off those placements: spans for `labels.py`, RTTM, and the events the generator *intended*
(`expected_events`), derived from the placements alone, never from `labels.py`. It is pure:
arrays and a dialogue id in, arrays and text out; it must not synthesise speech or touch files.

Audio legend: `audio` is float32 (2, samples) at 16 kHz; channel 0 = user, channel 1 =
assistant. Positions are whole samples, gaps and overlaps whole 10 ms steps, so a realized gap is
the drawn gap to the sample and every reference boundary is exact (seconds = samples / 16000).

Randomness: one generator per stream, seeded by sha256(f"{dialogue_id}|{seed}|{stream}"), so the
same turns, pools, config and id give byte-identical audio and references. Every hand-over
consumes the same draws whatever kind it becomes, so changing a rate changes only the hand-overs
it flips, not later draws.

How the simulated truth relates to `labels.py`, and how `evaluate_against_truth` scores it:

* assistant turn-taking: at the end of each user turn handed to the assistant; `labels.py`
  emits it at the end of the floor it infers, so it is compared directly.
* user back-channel: at each user back-channel start; compared directly.
* user turn-taking: at the user's real start of each turn taken from the assistant (gap,
  overlap or barge-in). `labels.py` keeps the real start only for barge-ins and starts within
  `immediate_s` of the assistant's end; for later starts it emits the assistant's end plus its
  own seeded draw T ~ N(0.6, 0.4^2), by design unrelated to the audio. Scoring that draw against
  the real start would measure the random draw, not the labelling. So the evaluation runs
  `events_for` with `immediate_s = inf` (the only thing it changes: every transfer to the user
  keeps its inferred start `FloorTransfer.start_s`), which measures what the labelling actually
  recovers: that a transfer to the user happened, after which assistant turn, and when the user
  began. The paper's synthetic T is a training-target choice layered on top of that, tested in
  `tests/duplex/test_labels.py`.

What `labels.py` cannot read correctly, and the simulator therefore does not produce by default
(see `SimulationConfig`): a speaker's consecutive stretches closer than its `pause_s` (0.5 s)
are one turn, so each speaker's turns and back-channels keep `min_own_pause_s` apart; an
overlapping newcomer that stops before the holder does not take the floor, so it outlasts the
holder by `min_outlast_s`; back-channels longer than `backchannel_max_s` (1.0 s) are turns, so
longer pool clips are rejected. One situation is left to the caller: a *main* turn of at most
1.0 s (a bare "Yes.") with the other speaker talking within 1 s on both sides reads as a
back-channel, and its floor transfers are lost; keep main turns longer, or expect misses.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from minmo.config import ConfigError
from minmo.duplex.evaluate import DEFAULT_KS, DuplexScore, score_samples
from minmo.duplex.labels import DuplexLabelConfig, Event, Span, analyse, events_for, frame_labels
from schemas.duplex import EventType
from schemas.units import SAMPLE_RATE_HZ, Seconds

STEP = SAMPLE_RATE_HZ // 100  # samples per 10 ms: the grid of every drawn duration
CHANNELS = {"user": 0, "assistant": 1}
FADE = STEP  # 10 ms fade-out where a barge-in cuts the assistant, so the cut does not click

Speaker = Literal["user", "assistant"]
Kind = Literal["turn", "backchannel", "barge_in"]
HandOverKind = Literal["gap", "overlap", "barge_in", "continuation"]


@dataclass(frozen=True)
class GapDistribution:
    """A duration distribution in seconds, clipped to [min_s, max_s], drawn on the 10 ms grid.

    normal: N(a, b^2) (a = mean, b = std); uniform: U(a, b); fixed: always a (b unused, and no
    random number is consumed).
    """

    kind: Literal["normal", "uniform", "fixed"]
    a: Seconds
    b: Seconds = 0.0
    min_s: Seconds = 0.0
    max_s: Seconds = math.inf

    def __post_init__(self) -> None:
        if self.kind not in ("normal", "uniform", "fixed"):
            raise ValueError(f"kind must be normal, uniform or fixed, got {self.kind!r}")
        if self.kind == "normal" and self.b < 0:
            raise ValueError(f"a normal needs std b >= 0, got {self.b}")
        if self.kind == "uniform" and self.b < self.a:
            raise ValueError(f"a uniform needs a <= b, got U({self.a}, {self.b})")
        if not 0 <= self.min_s <= self.max_s:
            raise ValueError(f"need 0 <= min_s <= max_s, got [{self.min_s}, {self.max_s}]")

    def draw(self, rng: np.random.Generator) -> Seconds:
        """One draw, clipped, rounded to the 10 ms grid."""
        return _samples(self.draw_samples(rng))

    def draw_samples(self, rng: np.random.Generator) -> int:
        if self.kind == "normal":
            x = float(rng.normal(self.a, self.b))
        elif self.kind == "uniform":
            x = float(rng.uniform(self.a, self.b))
        else:
            x = self.a
        return _grid(min(self.max_s, max(self.min_s, x)))


@dataclass(frozen=True)
class SimulationConfig:
    """Timing of simulated conversations; all durations in seconds. Each default says why."""

    to_user_gap: GapDistribution = GapDistribution("normal", 0.6, 0.4, min_s=0.0)
    """N(0.6, 0.4^2) clipped at 0: the MinMo paper's user reaction gap."""
    to_assistant_gap: GapDistribution = GapDistribution("normal", 0.4, 0.2, min_s=0.0)
    """N(0.4, 0.2^2) clipped at 0: a responsive assistant answers a little faster and more
    regularly than a person."""
    continuation_gap: GapDistribution = GapDistribution("uniform", 0.6, 1.2)
    """U(0.6, 1.2): the same speaker goes on after a pause long enough to be a new turn (over
    `labels.py`'s 0.5 s `pause_s`)."""
    overlap_rate: float = 0.1
    """Share of hand-overs that start before the other speaker finishes: common but short in
    telephone speech (see `overlap`)."""
    overlap: GapDistribution = GapDistribution("uniform", 0.1, 0.5)
    """U(0.1, 0.5): how long an overlapping hand-over overlaps."""
    barge_in_rate: float = 0.1
    """Share of assistant-to-user hand-overs where the user cuts in."""
    barge_in_lead_s: Seconds = 0.4
    """The assistant stops this long after the user starts (people yield within a few hundred
    ms)."""
    barge_in_min_into_s: Seconds = 1.0
    """A barge-in starts at least this far into the assistant's turn."""
    barge_in_min_cut_s: Seconds = 0.5
    """A barge-in leaves at least this much of the assistant's turn unsaid."""
    backchannel_rate: float = 0.1
    """Back-channels per second of the other speaker's turn (about one "mm-hm" per ten
    seconds, as in Fisher)."""
    backchannel_min_turn_s: Seconds = 2.0
    """Only turns at least this long get back-channels."""
    backchannel_margin_s: Seconds = 0.5
    """A back-channel lies at least this far inside the turn."""
    backchannel_max_s: Seconds = 1.0
    """Longer clips are rejected: they would be turns, not back-channels."""
    backchannel_gain: float = 0.7
    """Back-channels are said quietly."""
    min_own_pause_s: Seconds = 0.6
    """A speaker's turns and back-channels keep at least this far apart, so none merge into one
    turn (`labels.py` joins pauses under 0.5 s); limits a drawn gap or overlap only when a turn
    would otherwise run into the newcomer's previous speech."""
    min_outlast_s: Seconds = 0.3
    """An overlapping newcomer talks at least this long after the holder stops (else it did not
    take the floor); limits a drawn overlap on short turns."""
    lead_in_s: Seconds = 0.5
    """Silence before the first speech."""
    tail_s: Seconds = 0.5
    """Silence after the last speech."""
    seed: int = 0
    """Mixed with the dialogue id into every generator."""

    def __post_init__(self) -> None:
        for name in ("overlap_rate", "barge_in_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} is a probability: use a value in [0, 1], got {value}")
        durations = (
            "barge_in_lead_s",
            "barge_in_min_into_s",
            "barge_in_min_cut_s",
            "backchannel_rate",
            "backchannel_min_turn_s",
            "backchannel_margin_s",
            "backchannel_max_s",
            "backchannel_gain",
            "min_own_pause_s",
            "min_outlast_s",
            "lead_in_s",
            "tail_s",
        )
        for name in durations:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.barge_in_rate > 0 and self.barge_in_lead_s <= 0:
            raise ConfigError(
                "barge_in_lead_s must be > 0: the assistant stops after the user starts"
            )


@dataclass(frozen=True)
class PlacedClip:
    """One clip on the timeline, [start, end) in samples; the references are read off this.

    `source` indexes the input turns (turn, barge_in) or the speaker's pool (backchannel);
    `truncated` marks an assistant turn cut short by a barge-in.
    """

    speaker: Speaker
    start: int
    end: int
    kind: Kind
    source: int
    truncated: bool = False

    @property
    def channel(self) -> int:
        return CHANNELS[self.speaker]

    @property
    def start_s(self) -> Seconds:
        return _samples(self.start)

    @property
    def end_s(self) -> Seconds:
        return _samples(self.end)


@dataclass(frozen=True)
class HandOverDraw:
    """What the generator drew for the turn `turn` (index into the input turns).

    `drawn` (samples) is the gap for gap and continuation, the overlap length for overlap, and
    `barge_in_lead_s` for barge_in; `limited` is True where a placement constraint (see
    `SimulationConfig`) moved the turn, the only case where the realized value may differ.
    """

    turn: int
    kind: HandOverKind
    drawn: int
    limited: bool


@dataclass(frozen=True)
class HandOver:
    """A drawn value next to the one measured on the placed clips (samples and seconds)."""

    turn: int
    kind: HandOverKind
    drawn: int
    realized: int
    limited: bool

    @property
    def drawn_s(self) -> Seconds:
        return _samples(self.drawn)

    @property
    def realized_s(self) -> Seconds:
        return _samples(self.realized)


@dataclass(frozen=True, eq=False)
class SimulatedConversation:
    """A mixed two-channel conversation and the placements it was made from."""

    dialogue_id: str
    audio: np.ndarray  # float32 (2, samples) at 16 kHz: channel 0 user, channel 1 assistant
    turns: tuple[PlacedClip, ...]  # sorted by start, then speaker
    draws: tuple[HandOverDraw, ...]
    backchannels_skipped: int = 0  # drawn but no free place in the turn
    sample_rate_hz: int = SAMPLE_RATE_HZ

    @property
    def duration_s(self) -> Seconds:
        return _samples(self.audio.shape[1])

    @property
    def main_turns(self) -> list[PlacedClip]:
        """Turns and barge-ins in dialogue order (back-channels left out)."""
        return sorted((t for t in self.turns if t.kind != "backchannel"), key=lambda t: t.source)

    def reference_spans(self) -> list[Span]:
        return [Span(t.speaker, t.start_s, t.end_s) for t in self.turns]

    def rttm(self, uri: str) -> str:
        """One SPEAKER line per clip; times printed exactly (a sample is 62.5 us)."""
        lines = [
            f"SPEAKER {uri} 1 {_exact(t.start)} {_exact(t.end - t.start)} "
            f"<NA> <NA> {t.speaker} <NA> <NA>"
            for t in self.turns
        ]
        return "".join(line + "\n" for line in lines)

    def expected_events(self) -> list[Event]:
        """The events the generator intended, from the placements alone.

        assistant turn-taking at the end of each user turn followed by an assistant turn;
        user turn-taking at the start of each user turn following an assistant turn (`gap_s`
        is the realized gap, None where the user started before the assistant's end;
        `barge_in` is True then, as in `labels.py`); user back-channel at each user
        back-channel's start. The opening turn takes the floor from nobody: no event.
        """
        events: list[Event] = []
        main = self.main_turns
        for prev, cur in zip(main, main[1:], strict=False):
            if prev.speaker == cur.speaker:
                continue
            if cur.speaker == "assistant":
                events.append(Event(EventType.ASSISTANT_TURN_TAKING, prev.end_s))
            else:
                overlapped = cur.start < prev.end
                gap = None if overlapped else _samples(cur.start - prev.end)
                events.append(
                    Event(EventType.USER_TURN_TAKING, cur.start_s, gap_s=gap, barge_in=overlapped)
                )
        for t in self.turns:
            if t.kind == "backchannel" and t.speaker == "user":
                events.append(Event(EventType.USER_BACKCHANNEL, t.start_s))
        return sorted(events, key=lambda e: (e.time_s, e.event_type.value))


def simulate(
    turns: Sequence[tuple[str, np.ndarray]],
    backchannels: Mapping[str, Sequence[np.ndarray]],
    dialogue_id: str,
    config: SimulationConfig | None = None,
) -> SimulatedConversation:
    """Place `turns` (speaker, float32 mono 16 kHz, in dialogue order) and back-channels from
    `backchannels` (speaker -> clips; a missing or empty pool means none), then mix."""
    config = config or SimulationConfig()
    clips = [_check_clip(audio, f"turn {i}") for i, (_, audio) in enumerate(turns)]
    speakers = [_check_speaker(s) for s, _ in turns]
    pools: dict[str, list[np.ndarray]] = {
        _check_speaker(s): [_check_clip(c, f"{s} back-channel {i}") for i, c in enumerate(p)]
        for s, p in backchannels.items()
    }
    for s, pool in pools.items():
        for i, c in enumerate(pool):
            if len(c) > _grid(config.backchannel_max_s):
                raise ValueError(
                    f"{s} back-channel {i} lasts {len(c) / SAMPLE_RATE_HZ:.2f} s, over "
                    f"backchannel_max_s={config.backchannel_max_s}: trim it or raise the limit"
                )
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    main, draws = _place_turns(speakers, [len(c) for c in clips], config, dialogue_id)
    extra, skipped = _place_backchannels(main, pools, config, dialogue_id)
    placed = sorted(main + extra, key=lambda t: (t.start, t.speaker))
    _check_placements(placed)
    audio = _mix(placed, clips, pools, config)
    return SimulatedConversation(dialogue_id, audio, tuple(placed), tuple(draws), skipped)


def realized_handovers(sim: SimulatedConversation) -> list[HandOver]:
    """Each drawn hand-over next to the value measured on the placed clips.

    Realized: gap and continuation = start - previous end; overlap and barge_in = previous end -
    start (for a barge-in, the previous end is where the assistant was cut).
    """
    by_source = {t.source: t for t in sim.main_turns}
    out = []
    for d in sim.draws:
        cur, prev = by_source[d.turn], by_source[d.turn - 1]
        realized = cur.start - prev.end
        if d.kind in ("overlap", "barge_in"):
            realized = -realized
        out.append(HandOver(d.turn, d.kind, d.drawn, realized, d.limited))
    return out


def truth_samples(
    sim: SimulatedConversation, dialogue_id: str, config: DuplexLabelConfig
) -> tuple[
    tuple[list[tuple[EventType, float]], np.ndarray],
    tuple[list[tuple[EventType, float]], np.ndarray],
]:
    """(labelled, intended) for one conversation with "user" as the user, as `score_samples`
    takes them. Labelled: `labels.py` on `reference_spans()`, keeping every inferred user start
    (`immediate_s = inf`, see the module docstring)."""
    keep_starts = replace(config, immediate_s=math.inf)
    conversation = analyse(sim.reference_spans(), keep_starts)
    events = events_for(conversation, "user", dialogue_id, keep_starts)
    labels = frame_labels(conversation, "user", events, sim.duration_s, config.hop_s)
    labelled = [(e.event_type, e.time_s) for e in events]
    intended = [(e.event_type, e.time_s) for e in sim.expected_events()]
    # score_samples reads only the predicted frame labels (back-channel accuracy).
    return (labelled, labels), (intended, np.zeros(0, np.int8))


def evaluate_many(
    sims: Iterable[tuple[str, SimulatedConversation]],
    config: DuplexLabelConfig,
    ks: Sequence[int] = DEFAULT_KS,
) -> DuplexScore:
    """F1 at K frames (and back-channel accuracy) of `labels.py` against the simulated truth,
    pooled over (dialogue id, conversation) pairs."""
    predicted, reference = {}, {}
    for dialogue_id, sim in sims:
        predicted[dialogue_id], reference[dialogue_id] = truth_samples(sim, dialogue_id, config)
    return score_samples(predicted, reference, config.hop_s, ks)


def evaluate_against_truth(
    sim: SimulatedConversation,
    dialogue_id: str,
    config: DuplexLabelConfig,
    ks: Sequence[int] = DEFAULT_KS,
) -> DuplexScore:
    """`evaluate_many` for one conversation."""
    return evaluate_many([(dialogue_id, sim)], config, ks)


# -- placement --------------------------------------------------------------------------------


@dataclass
class _Turn:
    speaker: Speaker
    start: int
    end: int
    kind: Kind
    source: int
    truncated: bool = False


def _place_turns(
    speakers: Sequence[Speaker], lengths: Sequence[int], config: SimulationConfig, dialogue_id: str
) -> tuple[list[PlacedClip], list[HandOverDraw]]:
    rng = _rng(dialogue_id, config.seed, "turns")
    own_pause, outlast = _grid(config.min_own_pause_s), _grid(config.min_outlast_s)
    lead = _grid(config.barge_in_lead_s)
    turns: list[_Turn] = []
    draws: list[HandOverDraw] = []
    last_end: dict[str, int] = {}
    for i, (speaker, n) in enumerate(zip(speakers, lengths, strict=True)):
        kind: Kind = "turn"
        if i == 0:
            start = _grid(config.lead_in_s)
            turns.append(_Turn(speaker, start, start + n, kind, i))
            last_end[speaker] = start + n
            continue
        prev = turns[-1]
        floor = last_end.get(speaker, -own_pause) + own_pause  # never run into own speech
        if prev.speaker == speaker:
            drawn = config.continuation_gap.draw_samples(rng)
            wanted = prev.end + drawn
            start = max(wanted, floor)
            draws.append(HandOverDraw(i, "continuation", drawn, start != wanted))
        else:
            # The same draws for every hand-over, whichever kind it becomes.
            u_barge, u_overlap, u_position = rng.random(3)
            gap_dist = config.to_user_gap if speaker == "user" else config.to_assistant_gap
            gap = gap_dist.draw_samples(rng)
            overlap = config.overlap.draw_samples(rng)
            lo = max(prev.start + _grid(config.barge_in_min_into_s), floor)
            hi = prev.end - lead - _grid(config.barge_in_min_cut_s)
            barge = (
                speaker == "user"
                and u_barge < config.barge_in_rate
                and lo <= hi
                and n > lead + outlast
            )
            if barge:
                start = lo + STEP * int(u_position * ((hi - lo) // STEP + 1))
                start = min(start, hi)
                prev.end, prev.truncated = start + lead, True
                last_end[prev.speaker] = prev.end
                kind = "barge_in"
                draws.append(HandOverDraw(i, "barge_in", lead, False))
            elif u_overlap < config.overlap_rate:
                wanted = prev.end - overlap
                start = max(wanted, floor, prev.start + STEP, prev.end + outlast - n)
                draws.append(HandOverDraw(i, "overlap", overlap, start != wanted))
            else:
                wanted = prev.end + gap
                start = max(wanted, floor)
                draws.append(HandOverDraw(i, "gap", gap, start != wanted))
        turns.append(_Turn(speaker, start, start + n, kind, i))
        last_end[speaker] = start + n
    placed = [PlacedClip(t.speaker, t.start, t.end, t.kind, t.source, t.truncated) for t in turns]
    return placed, draws


def _place_backchannels(
    main: Sequence[PlacedClip],
    pools: Mapping[str, Sequence[np.ndarray]],
    config: SimulationConfig,
    dialogue_id: str,
) -> tuple[list[PlacedClip], int]:
    """Poisson(rate x turn length) back-channels by the listener inside each long enough turn,
    uniformly over the 10 ms positions that keep the margins and the listener's clearance."""
    rng = _rng(dialogue_id, config.seed, "backchannels")
    margin, clear = _grid(config.backchannel_margin_s), _grid(config.min_own_pause_s)
    placed: list[PlacedClip] = []
    skipped = 0
    for turn in main:
        length = turn.end - turn.start
        if length < _grid(config.backchannel_min_turn_s):
            continue
        listener: Speaker = "user" if turn.speaker == "assistant" else "assistant"
        pool = pools.get(listener, [])
        count = int(rng.poisson(config.backchannel_rate * length / SAMPLE_RATE_HZ))
        for _ in range(count if pool else 0):
            choice = int(rng.integers(len(pool)))
            pick = rng.random()
            dur = len(pool[choice])
            starts = np.arange(turn.start + margin, turn.end - margin - dur + 1, STEP)
            free = np.ones(len(starts), dtype=bool)
            for other in [*main, *placed]:
                if other.speaker == listener:
                    free &= (starts + dur + clear <= other.start) | (starts >= other.end + clear)
            candidates = starts[free]
            if not len(candidates):
                skipped += 1
                continue
            start = int(candidates[int(pick * len(candidates))])
            placed.append(PlacedClip(listener, start, start + dur, "backchannel", choice))
    return placed, skipped


def _check_placements(placed: Sequence[PlacedClip]) -> None:
    """The promise every reference rests on: nobody overlaps themself, no clip is empty."""
    for speaker in CHANNELS:
        own = [t for t in placed if t.speaker == speaker]
        for a, b in zip(own, own[1:], strict=False):
            if b.start < a.end:
                raise AssertionError(f"{speaker} overlaps themself at sample {b.start}")
    if any(t.end <= t.start for t in placed):
        raise AssertionError("an empty clip was placed")


def _mix(
    placed: Sequence[PlacedClip],
    clips: Sequence[np.ndarray],
    pools: Mapping[str, Sequence[np.ndarray]],
    config: SimulationConfig,
) -> np.ndarray:
    n = max(t.end for t in placed) + _grid(config.tail_s)
    audio = np.zeros((2, n), dtype=np.float32)
    for t in placed:
        if t.kind == "backchannel":
            clip = pools[t.speaker][t.source] * np.float32(config.backchannel_gain)
        else:
            clip = clips[t.source][: t.end - t.start].copy()
            if t.truncated:
                fade = min(FADE, len(clip))
                clip[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        audio[t.channel, t.start : t.end] += clip
    return audio


# -- helpers ----------------------------------------------------------------------------------


def _rng(dialogue_id: str, seed: int, stream: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{dialogue_id}|{seed}|{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _grid(seconds: float) -> int:
    """Seconds -> samples, rounded to the 10 ms grid."""
    return STEP * int(round(seconds * 100))


def _samples(n: int) -> Seconds:
    return n / SAMPLE_RATE_HZ


def _exact(n: int) -> str:
    """Samples as seconds, every digit needed (1/16000 s has at most 7 decimals), at least 3."""
    text = f"{n / SAMPLE_RATE_HZ:.7f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(3, '0')}"


def _check_speaker(speaker: str) -> Speaker:
    if speaker not in CHANNELS:
        raise ValueError(f"speaker must be 'user' or 'assistant', got {speaker!r}")
    return speaker  # type: ignore[return-value]


def _check_clip(audio: np.ndarray, what: str) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1 or audio.dtype != np.float32 or not len(audio):
        raise ValueError(
            f"{what}: expected non-empty mono float32 at 16 kHz, got {audio.dtype} {audio.shape}"
        )
    return audio
