"""Arrow contracts between minmo's steps and its trainer: one module per table, each versioned."""

from schemas._table import SchemaError, TableContract
from schemas.quarantine import QUARANTINE, ReasonCode
from schemas.recordings import RECORDINGS
from schemas.segments import SEGMENTS, SegmentOrigin, segment_id

__all__ = [
    "QUARANTINE",
    "RECORDINGS",
    "SEGMENTS",
    "ReasonCode",
    "SchemaError",
    "SegmentOrigin",
    "TableContract",
    "segment_id",
]
