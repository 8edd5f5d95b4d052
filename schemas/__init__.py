"""Arrow contracts between minmo's steps and its trainer: one module per table, each versioned."""

from schemas._table import SchemaError, TableContract
from schemas.annotations import ANNOTATIONS
from schemas.dialogues import DIALOGUES, ChatLayout, Role
from schemas.duplex import EVENTS, FRAME_LABELS, EventType, FrameLabel
from schemas.quarantine import QUARANTINE, ReasonCode
from schemas.recordings import RECORDINGS
from schemas.s2s import S2S_SAMPLES, S2SRecipe
from schemas.segments import SEGMENTS, SegmentOrigin, segment_id
from schemas.turns import TURNS

__all__ = [
    "ANNOTATIONS",
    "S2S_SAMPLES",
    "S2SRecipe",
    "DIALOGUES",
    "ChatLayout",
    "Role",
    "CONTRACTS",
    "EVENTS",
    "FRAME_LABELS",
    "TURNS",
    "EventType",
    "FrameLabel",
    "QUARANTINE",
    "RECORDINGS",
    "SEGMENTS",
    "ReasonCode",
    "SchemaError",
    "SegmentOrigin",
    "TableContract",
    "segment_id",
]

CONTRACTS: dict[str, TableContract] = {
    c.name: c
    for c in (
        RECORDINGS,
        SEGMENTS,
        QUARANTINE,
        TURNS,
        EVENTS,
        FRAME_LABELS,
        DIALOGUES,
        S2S_SAMPLES,
        ANNOTATIONS,
    )
}
"""Every table a build directory can hold, by name."""
