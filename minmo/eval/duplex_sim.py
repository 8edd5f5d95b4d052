"""`minmo duplex-sim CHECKPOINT CALL.wav`: a two-channel call streamed through the predictor.

The call's `user_channel` is the input stream (a stage-4 sample's speech input, schemas/duplex.py);
the other channel is the assistant's side, whose activity the deployed system knows and feeds
as the assistant-activity track. Every 120 ms the predictor (minmo.eval.stream.DuplexStreamer)
decides listen / speak / keep / stop; the decisions go to a JSONL file with their times.

The reference comes from the call itself, the way the build labels it: per-channel diarization
(minmo.diarization.channels) -> turns -> events and frame labels (minmo.duplex.labels, the
default DuplexLabelConfig), and the assistant-activity track from the same segments. Scores:
positive F1 at K = 1, 5, 10 of the turn-taking events (minmo.duplex.evaluate.score_samples, the
events read off the decisions as `minmo eval` reads them), back-channel accuracy, and the
response latency: for each reference assistant turn-taking (the user's turn ends), the time
from that end to the first speak decision made before the next reference event (a decision at
frame i is made once its audio has arrived, at (i + 1) x 120 ms).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from minmo.diarization.channels import ChannelDiarizer
from minmo.diarization.types import SpeakerHints
from minmo.duplex.evaluate import DEFAULT_KS, DuplexScore, label_sample_set, score_samples
from minmo.duplex.labels import (
    DuplexLabelConfig,
    Span,
    assistant_activity,
    n_frames,
)
from minmo.eval.chat import duplex_prompt
from minmo.eval.metrics import duplex_events, duplex_f1_table
from minmo.eval.model import DUPLEX_MODULES, load_checkpoint, read_export, require_modules
from minmo.eval.stream import HOP_SAMPLES, DuplexStreamer, read_audio
from minmo.io.atomic import write_text_atomic
from minmo.train.config import ModelSpec
from schemas.duplex import EventType, FrameLabel
from schemas.units import LLM_HOP_S, SAMPLE_RATE_HZ

DECISIONS = {
    FrameLabel.LISTEN: "listen",
    FrameLabel.SPEAK_NOW: "speak",
    FrameLabel.KEEP_SPEAKING: "keep",
    FrameLabel.STOP_NOW: "stop",
}


@dataclass
class DuplexSimConfig:
    """Which call `minmo duplex-sim` streams, and how."""

    checkpoint: str
    """A stage-4 export directory (`<out>/final/`, with the duplex predictor)."""
    call: str
    """A local two-channel (or more) call recording, one party per channel, any rate."""
    out: str = "decisions.jsonl"
    """The decisions, one JSON row per 120 ms step; the summary goes beside it
    (<stem>.summary.json)."""
    user_channel: int = 0
    """The channel that plays the user (the input stream); every other channel is the
    assistant's side."""
    max_duration_s: float | None = None
    """Stream only the call's first seconds; None: all of it."""
    context_s: float = 2.4
    """Audio the voice encoder sees per step (the last seconds received)."""
    device: str | None = None
    """torch device; None: cuda when present, else cpu."""
    model: ModelSpec = field(default_factory=ModelSpec)
    """The model, for an export whose export.json does not record it (older exports)."""
    seed: int = 0
    """The training seed, for an export whose export.json does not record it."""

    def __post_init__(self) -> None:
        if self.user_channel < 0:
            raise ValueError(f"user_channel must be >= 0, got {self.user_channel}")
        if self.max_duration_s is not None and self.max_duration_s < LLM_HOP_S:
            raise ValueError(f"max_duration_s must be >= {LLM_HOP_S} s or none")
        if self.context_s < LLM_HOP_S:
            raise ValueError(f"context_s must be >= {LLM_HOP_S} s (one LLM frame)")


@dataclass
class CallReference:
    """The call's labels for the user's role: events, frame labels and assistant activity."""

    events: list[tuple[EventType, float]]
    labels: np.ndarray
    activity: np.ndarray


def call_reference(audio: np.ndarray, user_channel: int, call_id: str) -> CallReference:
    """Labels of the call as the build derives them: per-channel diarization -> label rules."""
    segments = ChannelDiarizer()(audio, SpeakerHints())
    spans = [Span(s.speaker, s.start_s, s.end_s) for s in segments]
    user = f"ch{user_channel}"
    duration_s = audio.shape[1] / SAMPLE_RATE_HZ
    config = DuplexLabelConfig()
    samples = label_sample_set(spans, call_id, duration_s, config)
    if user not in samples:
        raise ValueError(f"channel {user_channel} of {call_id} has no speech to play the user")
    events, labels = samples[user]
    activity = assistant_activity(spans, user, duration_s, config.hop_s)
    return CallReference(events, labels, activity)


def response_latencies(
    reference: list[tuple[EventType, float]], decisions: np.ndarray, hop_s: float
) -> list[float | None]:
    """Per reference assistant turn-taking, seconds from the user's turn end to the first speak
    decision (made at the end of its frame) before the next reference event; None: no answer."""
    times = sorted(t for _, t in reference)
    speaks = np.flatnonzero(decisions == int(FrameLabel.SPEAK_NOW))
    out: list[float | None] = []
    for event, t in sorted(reference, key=lambda e: e[1]):
        if event is not EventType.ASSISTANT_TURN_TAKING:
            continue
        later = [u for u in times if u > t]
        until = later[0] if later else float("inf")
        first = int(np.floor(t / hop_s + 1e-9))
        hit = next((int(i) for i in speaks if i >= first and i * hop_s < until), None)
        out.append(None if hit is None else (hit + 1) * hop_s - t)
    return out


@dataclass
class DuplexSimResult:
    doc: dict[str, Any]
    out: str
    score: DuplexScore

    def render(self) -> str:
        d = self.doc
        latency = d["response_latency"]
        mean = latency["mean_s"]
        lines = [
            f"duplex-sim {d['call']} (user = channel {d['user_channel']}): {d['steps']} steps of "
            f"{d['hop_s'] * 1000:.0f} ms, {d['step_ms']:.1f} ms per step on {d['device']} -> "
            f"{self.out}",
            "decisions: " + ", ".join(f"{k} {v}" for k, v in d["decisions"].items()),
            "event type               " + "".join(f"  F1@{k:<3}" for k in DEFAULT_KS),
            *(
                f"{event:<25}" + "".join(f"  {per_k[str(k)]['f1']:6.3f}" for k in DEFAULT_KS)
                for event, per_k in d["f1"].items()
            ),
            f"{'back-channel accuracy':<25}"
            + "".join(f"  {d['backchannel_accuracy'][str(k)]:6.3f}" for k in DEFAULT_KS)
            + f"  ({d['backchannels']} reference back-channels)",
            f"response latency (user turn end -> speak): answered {latency['answered']} of "
            f"{latency['turns']}"
            + ("" if mean is None else f", mean {mean:.2f} s, median {latency['median_s']:.2f} s"),
        ]
        return "\n".join(lines)


def run_duplex_sim(config: DuplexSimConfig) -> DuplexSimResult:
    meta = read_export(config.checkpoint)
    require_modules(
        config.checkpoint,
        str(meta["stage"]),
        list(meta["modules"]),
        DUPLEX_MODULES,
        "duplex",
        config.call,
    )
    audio = read_audio(config.call)
    if audio.shape[0] < 2:
        raise ValueError(
            f"{config.call} has {audio.shape[0]} channel; duplex-sim streams a call with one "
            "party per channel (the user's channel is the input, the other the assistant's side)"
        )
    if config.user_channel >= audio.shape[0]:
        raise ValueError(
            f"user_channel {config.user_channel}: {config.call} has {audio.shape[0]} channels"
        )
    if config.max_duration_s is not None:
        audio = audio[:, : round(config.max_duration_s * SAMPLE_RATE_HZ)]
    call_id = Path(config.call).stem
    reference = call_reference(audio, config.user_channel, call_id)
    ckpt = load_checkpoint(config.checkpoint, config.model, config.seed, config.device)
    streamer = DuplexStreamer(ckpt.model, duplex_prompt(ckpt.tokenizer), config.context_s)
    user = audio[config.user_channel]
    duration_s = audio.shape[1] / SAMPLE_RATE_HZ
    steps = n_frames(duration_s, LLM_HOP_S)
    started = time.perf_counter()
    decisions = np.zeros(steps, dtype=np.int8)
    rows = []
    for i in range(steps):
        end = min((i + 1) * HOP_SAMPLES, user.shape[0])
        active = int(reference.activity[i])
        decisions[i] = streamer.step(user[:end], active)
        rows.append(
            {
                "frame": i,
                "time_s": round(i * LLM_HOP_S, 6),
                "decided_s": round(end / SAMPLE_RATE_HZ, 6),
                "decision": DECISIONS[FrameLabel(int(decisions[i]))],
                "assistant_active": active,
                "reference": DECISIONS[FrameLabel(int(reference.labels[i]))],
            }
        )
    wall_s = time.perf_counter() - started
    predicted = {call_id: (duplex_events(decisions, LLM_HOP_S), decisions)}
    score = score_samples(
        predicted, {call_id: (reference.events, reference.labels)}, LLM_HOP_S, DEFAULT_KS
    )
    latencies = response_latencies(reference.events, decisions, LLM_HOP_S)
    answered = [x for x in latencies if x is not None]
    doc = {
        "checkpoint": ckpt.path,
        "call": config.call,
        "user_channel": config.user_channel,
        "duration_s": duration_s,
        "hop_s": LLM_HOP_S,
        "steps": steps,
        "wall_s": wall_s,
        "step_ms": (streamer.step_s or 0.0) * 1000.0,
        "device": str(ckpt.device),
        "decisions": {
            name: int((decisions == int(label)).sum()) for label, name in DECISIONS.items()
        },
        "f1": duplex_f1_table(score, DEFAULT_KS),
        "backchannel_accuracy": {str(k): score.backchannel_accuracy(k) for k in DEFAULT_KS},
        "backchannels": sum(e is EventType.USER_BACKCHANNEL for e, _ in reference.events),
        "response_latency": {
            "turns": len(latencies),
            "answered": len(answered),
            "mean_s": statistics.fmean(answered) if answered else None,
            "median_s": statistics.median(answered) if answered else None,
            "per_turn_s": latencies,
        },
    }
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fs = pafs.LocalFileSystem()
    write_text_atomic(fs, str(out), "".join(json.dumps(r) + "\n" for r in rows))
    summary = out.with_name(out.stem + ".summary.json")
    write_text_atomic(fs, str(summary), json.dumps(doc, indent=2))
    return DuplexSimResult(doc, str(out), score)
