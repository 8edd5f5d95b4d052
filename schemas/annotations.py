"""The annotations table: pseudo-labels a model gave a segment (`minmo annotate`).

One row per (segment, model version). Human labels stay in `segments` / `recordings`; this table
never replaces them: the shards step chooses per task which to read (schemas.labels.LabelSource)
and records the choice in every sample's provenance. A confidence is the model's probability of
the label it gave (null where the model gives none); `model_version` is a digest of the model's
files, so labels of a changed model are told apart from the old ones.
"""

from __future__ import annotations

import pyarrow as pa

from schemas._table import TableContract
from schemas.labels import LABEL_ENUMS

ANNOTATIONS = TableContract(
    name="annotations",
    version=1,
    schema=pa.schema(
        [
            pa.field("segment_id", pa.string(), nullable=False),
            pa.field("recording_id", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),  # e.g. "SenseVoiceSmall"
            pa.field("model_version", pa.string(), nullable=False),  # digest of its files
            pa.field("transcript", pa.string()),
            pa.field("transcript_confidence", pa.float32()),  # mean token probability
            pa.field("language", pa.string()),  # ISO 639-1 where the model's tag maps to one
            pa.field("language_confidence", pa.float32()),
            pa.field("emotion", pa.string()),  # schemas.labels.EMOTIONS
            pa.field("emotion_confidence", pa.float32()),
            pa.field("audio_events", pa.list_(pa.string())),  # lower-cased, as in segments
            pa.field("audio_events_confidence", pa.float32()),
        ]
    ),
    required=("segment_id", "recording_id", "model", "model_version"),
    enums={"emotion": LABEL_ENUMS["emotion"]},
)
