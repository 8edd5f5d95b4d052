"""The speaker turns table: who speaks when in a conversation, as diarization found it.

One row per stretch of one speaker's speech. Overlap is kept: rows of different speakers of the
same recording may overlap in time. `speaker` is local to the recording ("ch0" for channel 0 of
a telephone call, "spk1" for the second voice a clustering backend found).

`backend` names the diarization backend that produced the row ("channels", "pyannote",
"offline", ...). It is an open set on purpose: the backend registry
(minmo/diarization/registry.py) is the source of truth, so that adding a backend is one module
and one registration line; schemas/ cannot see that registry, and a closed enum here would be a
third place to edit. The values of the existing backends are unchanged.
"""

from __future__ import annotations

import pyarrow as pa

from schemas._table import TableContract

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
            pa.field("backend", pa.string(), nullable=False),  # a registered backend's name
            pa.field("confidence", pa.float32(), nullable=False),  # backend's own, in [0, 1]
        ]
    ),
    required=("recording_id", "speaker", "channel", "start_s", "end_s", "backend", "confidence"),
    non_negative=("channel", "start_s", "end_s", "confidence"),
)
