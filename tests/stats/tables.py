"""Small hand-made minmo builds for the stats tests: every value chosen so that each statistic
can be worked out by hand (the expected figures are in the tests, with the arithmetic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from schemas import EVENTS, FRAME_LABELS, QUARANTINE, RECORDINGS, SEGMENTS, TURNS


def _recording(rid: str, corpus: str, duration_s: float, **over: Any) -> dict[str, Any]:
    row = {
        "recording_id": rid,
        "source_uri": f"/data/{corpus}/{rid}.wav",
        "corpus": corpus,
        "container": "wav",
        "sample_rate_hz": 16000,
        "source_channels": 1,
        "channels": 1,
        "bits": 16,
        "duration_s": duration_s,
        "bytes": int(duration_s * 32000),
        "content_sha1": f"sha-{rid}",
        "peak_dbfs": -3.0,
        "rms_dbfs": -20.0,
        "clipping_ratio": 0.0,
        "speech_ratio": 0.5,
        "snr_db": 20.0,
        "language": "en",
        "speaker": None,
        "task": "asr",
        "dup_of": None,
    }
    row.update(over)
    return row


RECORDING_ROWS = [
    # corpus a: 3 recordings, 3600 + 1800 + 1800 s = 2 h; r3 is an exact copy of r2 (same PCM)
    _recording("r1", "a", 3600.0, speaker="alice", rms_dbfs=-30.0, snr_db=None),
    _recording("r2", "a", 1800.0, speaker="bob", language="de", rms_dbfs=-20.0, snr_db=10.0),
    _recording("r3", "a", 1800.0, speaker="bob", language="de", content_sha1="sha-r2", dup_of="r2"),
    # corpus b: one 60 s two-party call
    _recording("c1", "b", 60.0, task="conversation", clipping_ratio=0.002, snr_db=35.0),
]

SEGMENT_ROWS = [
    {
        "segment_id": f"r1-c0-{i}",
        "recording_id": rid,
        "channel": 0,
        "start_s": 0.0,
        "end_s": dur,
        "duration_s": dur,
        "speech_prob": 0.9,
        "origin": "vad",
        "text": None,
        "speaker": spk,
        "language": "en",
    }
    for i, (rid, dur, spk) in enumerate(
        [("r1", 10.0, "carol"), ("r1", 20.0, None), ("r2", 0.25, None), ("c1", 30.0, None)]
    )
]

QUARANTINE_ROWS = [
    {"source_uri": "/data/x/z.wav", "step": "ingest", "reason_code": "undecodable", "detail": "z"},
    {"source_uri": "/data/x/a.wav", "step": "ingest", "reason_code": "undecodable", "detail": "a"},
    {"source_uri": "/data/x/m.wav", "step": "ingest", "reason_code": "undecodable", "detail": "m"},
    {"source_uri": "/data/x/q.wav", "step": "ingest", "reason_code": "undecodable", "detail": "q"},
    {"source_uri": "/data/x/e.wav", "step": "ingest", "reason_code": "empty_audio", "detail": None},
    {"source_uri": "/data/y/c.wav", "step": "diarize", "reason_code": "no_speech", "detail": "d"},
    {
        "source_uri": "/data/chats.jsonl",
        "item_key": "line 7",
        "step": "synthesize",
        "reason_code": "bad_dialogue",
        "detail": "line 7: invalid JSON",
    },
]

# c1 (60 s): A 0-10, B 10.5-20 (gap 0.5), A 19.5-30 (overlap 0.5), B 25-26 (a back-channel
# inside A's turn: overlap 1.0), A 31-40 (gap 5.0 after B's back-channel ends at 26)
TURN_ROWS = [
    {
        "recording_id": "c1",
        "speaker": s,
        "channel": 0,
        "start_s": a,
        "end_s": b,
        "backend": "channels",
        "confidence": 1.0,
    }
    for s, a, b in [("A", 0, 10), ("B", 10.5, 20), ("A", 19.5, 30), ("B", 25, 26), ("A", 31, 40)]
]

EVENT_ROWS = [
    {
        "sample_id": "c1-uB",
        "recording_id": "c1",
        "user_speaker": "B",
        "assistant_speaker": "A",
        "event_type": t,
        "time_s": ts,
        "gap_s": gap,
        "barge_in": barge,
    }
    for t, ts, gap, barge in [
        ("assistant_turn_taking", 20.0, None, False),
        ("user_turn_taking", 10.6, 0.6, False),
        ("user_turn_taking", 19.5, None, True),
        ("user_backchannel", 25.0, None, False),
    ]
]

FRAME_ROWS = [
    {
        "sample_id": "c1-uB",
        "recording_id": "c1",
        "user_speaker": "B",
        "assistant_speaker": "A",
        "user_channel": 0,
        "hop_s": 0.12,
        "n_frames": 10,
        "duration_s": 60.0,
        "labels": [0, 0, 0, 0, 1, 2, 2, 2, 2, 3],
    },
    {
        "sample_id": "c1-uA",
        "recording_id": "c1",
        "user_speaker": "A",
        "assistant_speaker": "B",
        "user_channel": 0,
        "hop_s": 0.12,
        "n_frames": 10,
        "duration_s": 60.0,
        "labels": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    },
]


def write_build(root: Path, tables: dict[str, list[dict[str, Any]]] | None = None) -> Path:
    """Write the hand-made tables (or `tables`) under root as minmo table folders."""
    contracts = {
        "recordings": RECORDINGS,
        "segments": SEGMENTS,
        "quarantine": QUARANTINE,
        "turns": TURNS,
        "events": EVENTS,
        "frame_labels": FRAME_LABELS,
    }
    rows = tables or {
        "recordings": RECORDING_ROWS,
        "segments": SEGMENT_ROWS,
        "quarantine": QUARANTINE_ROWS,
        "turns": TURN_ROWS,
        "events": EVENT_ROWS,
        "frame_labels": FRAME_ROWS,
    }
    for name, table_rows in rows.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(contracts[name].from_rows(table_rows), folder / "part-0000.parquet")
    return root
