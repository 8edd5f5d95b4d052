"""The speaker turns table: who speaks when in a conversation, as diarization found it.

One row per stretch of one speaker's speech. Overlap is kept: rows of different speakers of the
same recording may overlap in time. `speaker` is local to the recording ("ch0" for channel 0 of
a telephone call, "spk1" for the second voice a clustering backend found).
"""

from __future__ import annotations

import enum

import pyarrow as pa

from schemas._table import TableContract


class DiarizationBackend(str, enum.Enum):
    CHANNELS = "channels"  # one speaker per channel, per-channel VAD, crosstalk removed
    PYANNOTE = "pyannote"  # pyannote.audio's SpeakerDiarization pipeline
    OFFLINE = "offline"  # VAD -> Resemblyzer embeddings -> clustering, weights in the wheel


TURNS = TableContract(
    name="turns",
    version=1,
    schema=pa.schema(
        [
            pa.field("recording_id", pa.string(), nullable=False),
            pa.field("speaker", pa.string(), nullable=False),
            pa.field("channel", pa.int16(), nullable=False),  # audio channel heard on; 0 mono
            pa.field("start_s", pa.float64(), nullable=False),
            pa.field("end_s", pa.float64(), nullable=False),
            pa.field("backend", pa.string(), nullable=False),
            pa.field("confidence", pa.float32(), nullable=False),  # backend's own, in [0, 1]
        ]
    ),
    required=("recording_id", "speaker", "channel", "start_s", "end_s", "backend", "confidence"),
    enums={"backend": DiarizationBackend},
    non_negative=("channel", "start_s", "end_s", "confidence"),
)
