"""The label-turns step: speaker turns -> duplex events and frame labels, one sample per speaker
of each conversation (each speaker plays the user once; in a meeting every other speaker stands
for the assistant side, minmo/duplex/labels.py rule 5), each with its assistant-activity track
(schemas/duplex.py: what a stage-4 sample's input is).

Owns: reading each diarized conversation's turns, quarantining conversations with one voice
(`not_two_party`), running minmo/duplex/labels.py per role assignment in a Ray Data stage, and the
summary (events per type, back-channels, gap/overlap percentiles at floor transfers, counted over
each conversation as a whole).
Resumable and idempotent through `RecordingStep`, like diarize.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads

from minmo.config import StorageOptions, storage_options_field
from minmo.duplex.labels import (
    DuplexLabelConfig,
    Span,
    analyse,
    assistant_activity,
    assistant_side_name,
    events_for,
    frame_labels,
    role_conversation,
)
from pipelines.build import BuildDir
from pipelines.ray_runtime import ensure_ray
from pipelines.recording_step import RecordingStep, StepTotals
from schemas import EVENTS, FRAME_LABELS, QUARANTINE, TURNS, EventType, ReasonCode
from schemas.quarantine import quarantine_row

STEP = "label-turns"
PERCENTILES = (5, 25, 50, 75, 95)


@dataclass(frozen=True)
class LabelTurnsConfig(DuplexLabelConfig):
    """The heuristics' thresholds (DuplexLabelConfig, minmo/duplex/labels.py: one home for their
    fields and docs) plus the step's batching and storage."""

    recordings_per_unit: int = 64
    """Recordings per committed unit of work: the granularity of resume."""
    units_per_wave: int = 16
    """Units in flight at once."""
    storage_options: StorageOptions = storage_options_field()

    def duplex(self) -> DuplexLabelConfig:
        """Just the heuristics' thresholds, for the pure labeller."""
        return DuplexLabelConfig(
            **{f.name: getattr(self, f.name) for f in fields(DuplexLabelConfig)}
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_id(recording_id: str, user: str) -> str:
    return f"{recording_id}-u{user}"


def label_conversation(item: dict[str, Any], config: DuplexLabelConfig) -> dict[str, Any]:
    """One conversation's turns -> events and frame-label rows, one sample per speaker."""
    rid = item["recording_id"]
    turns = item["turns"]
    speakers = sorted({t["speaker"] for t in turns})
    stats: dict[str, float] = {"audio_s": item["duration_s"]}
    if len(speakers) < 2:
        row = quarantine_row(
            item["source_uri"],
            ReasonCode.NOT_TWO_PARTY.value,
            f"{len(speakers)} speaker(s) {speakers}; duplex labels need at least 2 voices",
            step=STEP,
        )
        row["item_key"] = rid
        return {"tables": {"quarantine": [row]}, "stats": stats}
    ipus = [Span(t["speaker"], t["start_s"], t["end_s"]) for t in turns]
    conversation = analyse(ipus, config)  # the whole conversation: the summary's figures
    channel_of = {t["speaker"]: t["channel"] for t in turns}
    events_rows: list[dict[str, Any]] = []
    label_rows: list[dict[str, Any]] = []
    for user in speakers:
        assistant = assistant_side_name(speakers, user)
        view = role_conversation(ipus, user, config)
        sid = sample_id(rid, user)
        # Event times are stored to the millisecond; frames are placed from those same times,
        # so a frame's label and the event table agree even at a frame boundary.
        events = [
            replace(
                e, time_s=round(e.time_s, 3), gap_s=None if e.gap_s is None else round(e.gap_s, 3)
            )
            for e in events_for(view, user, rid, config)
        ]
        labels = frame_labels(view, user, events, item["duration_s"], config.hop_s)
        activity = assistant_activity(ipus, user, item["duration_s"], config.hop_s)
        events_rows += [
            {
                "sample_id": sid,
                "recording_id": rid,
                "user_speaker": user,
                "assistant_speaker": assistant,
                "event_type": e.event_type.value,
                "time_s": round(e.time_s, 3),
                "gap_s": None if e.gap_s is None else round(e.gap_s, 3),
                "barge_in": e.barge_in,
            }
            for e in events
        ]
        label_rows.append(
            {
                "sample_id": sid,
                "recording_id": rid,
                "user_speaker": user,
                "assistant_speaker": assistant,
                "user_channel": channel_of[user],
                "hop_s": config.hop_s,
                "n_frames": len(labels),
                "duration_s": item["duration_s"],
                "labels": labels.tolist(),
                "assistant_activity": activity.tolist(),
            }
        )
    offsets = [t.start_s - t.previous_end_s for t in conversation.transfers]
    stats |= {
        "conversations": 1,
        "samples": len(speakers),
        "meetings": int(len(speakers) > 2),
        "turns": len(conversation.turns),
        "floor_transfers": len(conversation.transfers),
        "backchannels": len(conversation.backchannels),
        "overlapped_transfers": sum(o < 0 for o in offsets),
    }
    for row in events_rows:
        stats[f"events_{row['event_type']}"] = stats.get(f"events_{row['event_type']}", 0) + 1
    return {
        "tables": {"events": events_rows, "frame_labels": label_rows},
        "stats": stats,
        "lists": {"transfer_offsets_s": [round(o, 3) for o in offsets]},
    }


def label_batch(batch: dict[str, np.ndarray], config: dict[str, Any]) -> dict[str, list[Any]]:
    """Ray Data batch function: work rows -> result rows (see pipelines/recording_step.py)."""
    duplex = LabelTurnsConfig(**config).duplex()
    out: dict[str, list[Any]] = {"unit": [], "recording_id": [], "result_json": []}
    for unit, rid, item_json in zip(
        batch["unit"], batch["recording_id"], batch["item_json"], strict=True
    ):
        out["unit"].append(unit)
        out["recording_id"].append(rid)
        out["result_json"].append(json.dumps(label_conversation(json.loads(item_json), duplex)))
    return out


@dataclass
class LabelTurnsSummary:
    recordings_run: int
    wall_s: float
    totals: StepTotals

    def to_dict(self) -> dict[str, Any]:
        t = self.totals
        offsets = np.asarray(t.lists.get("transfer_offsets_s", []), dtype=np.float64)
        gaps, overlaps = offsets[offsets >= 0], -offsets[offsets < 0]
        return {
            "recordings_run": self.recordings_run,
            "wall_s": self.wall_s,
            "conversations": int(t.stats.get("conversations", 0)),
            "meetings": int(t.stats.get("meetings", 0)),  # conversations of 3+ speakers
            "samples": int(t.stats.get("samples", 0)),
            "hours": t.stats.get("audio_s", 0.0) / 3600,
            "turns": int(t.stats.get("turns", 0)),
            "floor_transfers": int(t.stats.get("floor_transfers", 0)),
            "backchannels": int(t.stats.get("backchannels", 0)),
            "events": {e.value: int(t.stats.get(f"events_{e.value}", 0)) for e in EventType},
            "frame_label_rows": t.rows.get("frame_labels", 0),
            "gap_s_percentiles": _percentiles(gaps),
            "overlap_s_percentiles": _percentiles(overlaps),
            "quarantined": dict(t.quarantined),
        }

    def render(self) -> str:
        d = self.to_dict()
        events = ", ".join(f"{k} {v}" for k, v in d["events"].items())

        def pct(values: dict[str, float]) -> str:
            return " ".join(f"p{k}={v:.2f}" for k, v in values.items()) or "none"

        lines = [
            f"label-turns: {self.recordings_run} conversation(s) this run in {self.wall_s:.1f} s",
            f"  build: {d['conversations']} conversations ({d['meetings']} meetings of 3+ "
            f"speakers, {d['hours']:.3f} h) -> {d['samples']} "
            f"samples, {d['turns']} turns, {d['floor_transfers']} floor transfers, "
            f"{d['backchannels']} back-channels",
            f"  events: {events}",
            f"  gaps at transfers (s):     {pct(d['gap_s_percentiles'])}",
            f"  overlaps at transfers (s): {pct(d['overlap_s_percentiles'])}",
            f"  quarantined: {sum(d['quarantined'].values())}"
            + "".join(f"\n    {r}: {n}" for r, n in sorted(d["quarantined"].items())),
        ]
        return "\n".join(lines)


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if not values.size:
        return {}
    return {str(p): round(float(np.percentile(values, p)), 3) for p in PERCENTILES}


def diarized_conversations(
    build: BuildDir, exclude: set[str], chunk: int = 1024
) -> tuple[int, Iterator[dict[str, Any]]]:
    """(count, work items): each diarized recording's turns, duration and source, by recording
    id. Items are read `chunk` recordings at a time, so the driver never holds the whole table."""
    turn_files = build.files(build.table_dir("turns"), ".parquet")
    if not turn_files:
        return 0, iter(())
    turns = pads.dataset(turn_files, filesystem=build.fs, format="parquet", schema=TURNS.schema)
    all_ids = pc.unique(turns.to_table(columns=["recording_id"])["recording_id"]).to_pylist()
    ids = sorted(set(all_ids) - exclude)
    recordings = pads.dataset(
        build.files(build.table_dir("recordings"), ".parquet"), filesystem=build.fs
    )

    def items() -> Iterator[dict[str, Any]]:
        for first in range(0, len(ids), chunk):
            wanted = pc.field("recording_id").isin(ids[first : first + chunk])
            info = {
                r["recording_id"]: r
                for r in recordings.to_table(
                    columns=["recording_id", "source_uri", "duration_s"], filter=wanted
                ).to_pylist()
            }
            by_recording: dict[str, list[dict[str, Any]]] = {}
            for row in turns.to_table(
                columns=["recording_id", "speaker", "channel", "start_s", "end_s"], filter=wanted
            ).to_pylist():
                by_recording.setdefault(row.pop("recording_id"), []).append(row)
            for rid in ids[first : first + chunk]:
                yield {
                    "recording_id": rid,
                    "source_uri": info[rid]["source_uri"],
                    "duration_s": info[rid]["duration_s"],
                    "turns": sorted(by_recording[rid], key=lambda t: (t["start_s"], t["speaker"])),
                }

    return len(ids), items()


def run_label_turns(
    build_uri: str, config: LabelTurnsConfig, progress: bool = True
) -> LabelTurnsSummary:
    """Label every diarized conversation not yet labelled; resumable, idempotent."""
    build = BuildDir(build_uri, **config.storage_options)
    step = RecordingStep(
        build,
        STEP,
        {"events": EVENTS, "frame_labels": FRAME_LABELS, "quarantine": QUARANTINE},
        config.recordings_per_unit,
        config.units_per_wave,
    )
    n_pending, pending = diarized_conversations(build, step.covered())
    recordings_run, wall_s = 0, 0.0
    if n_pending:
        ensure_ray(progress=progress)
        cfg = config.to_dict()
        counts = step.run(
            pending,
            lambda ds: ds.map_batches(label_batch, fn_kwargs={"config": cfg}, batch_size=16),
            progress,
            n_pending,
        )
        recordings_run, wall_s = counts.recordings_run, counts.wall_s
    summary = LabelTurnsSummary(recordings_run, wall_s, step.totals())
    build.write_json_atomic(build.path("_state", STEP, "summary.json"), summary.to_dict())
    return summary
