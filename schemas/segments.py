"""The segments table: stretches of one channel of a recording, at most `max_segment_s` long.

A segment comes from a source supervision (Kaldi `segments`, a Lhotse supervision, a transcribed
short file) and then carries its text/speaker/language, or from VAD and carries none.

v2 (labels): the label columns of schemas/labels.py, the supervision's own labels, else its
recording's (a whole-file label covers every segment of the file). Readers of a v1 build see
them as null.
"""

from __future__ import annotations

import enum

import pyarrow as pa

from schemas._table import TableContract
from schemas.labels import LABEL_ENUMS, LABEL_FIELDS


class SegmentOrigin(str, enum.Enum):
    VAD = "vad"
    SUPERVISION = "supervision"


SEGMENTS = TableContract(
    name="segments",
    version=2,
    schema=pa.schema(
        [
            pa.field("segment_id", pa.string(), nullable=False),  # recording_id-c<ch>-<ms>-<ms>
            pa.field("recording_id", pa.string(), nullable=False),
            pa.field("channel", pa.int16(), nullable=False),
            pa.field("start_s", pa.float64(), nullable=False),
            pa.field("end_s", pa.float64(), nullable=False),
            pa.field("duration_s", pa.float64(), nullable=False),
            pa.field("speech_prob", pa.float32(), nullable=False),  # mean VAD probability inside
            pa.field("origin", pa.string(), nullable=False),
            pa.field("text", pa.string()),
            pa.field("speaker", pa.string()),
            pa.field("language", pa.string()),
            *LABEL_FIELDS,
        ]
    ),
    required=("segment_id", "recording_id", "channel", "start_s", "end_s", "origin"),
    enums={"origin": SegmentOrigin, **LABEL_ENUMS},
    non_negative=("start_s", "end_s", "duration_s", "channel", "age"),
)


def segment_id(recording_id: str, channel: int, start_s: float, end_s: float) -> str:
    """Stable id: the same recording cut at the same place always gets the same id."""
    return f"{recording_id}-c{channel}-{round(start_s * 1000):09d}-{round(end_s * 1000):09d}"
