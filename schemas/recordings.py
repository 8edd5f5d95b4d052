"""The recordings table: one row per source audio file (or Kaldi wav.scp entry), measured.

v2 (relocatable builds): `source_key` added; `recording_id` hashes it instead of the URI.
v3 (labels): the label columns of schemas/labels.py (`emotion`, `gender`, `age`, `audio_events`,
`translations`, `dialect`), the whole file's labels as its source gave them. Readers of an older
build see them as null.

Audio stays in its source; this row says where it is, what it is, and how it sounds.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from schemas._table import TableContract
from schemas.labels import LABEL_ENUMS, LABEL_FIELDS

RECORDINGS = TableContract(
    name="recordings",
    version=3,
    schema=pa.schema(
        [
            # sha1(source_key, content): the same wherever the corpus or the build is mounted
            pa.field("recording_id", pa.string(), nullable=False),
            # where it was when ingested; audio a step wrote into the build: its build key
            pa.field("source_uri", pa.string(), nullable=False),
            # `corpus:path relative to the listed source root` (pipelines.ingest.items.source_key),
            # or `build:<path in the build>` (pipelines.build) for audio a step wrote; null only
            # on rows such a step wrote before build keys
            pa.field("source_key", pa.string()),
            pa.field("corpus", pa.string(), nullable=False),
            pa.field("container", pa.string(), nullable=False),  # wav, flac, mp3, ogg, m4a, ...
            pa.field("sample_rate_hz", pa.int32(), nullable=False),  # as stored in the source
            pa.field("source_channels", pa.int16(), nullable=False),
            pa.field("channels", pa.int16(), nullable=False),  # kept after folding dual mono
            pa.field("bits", pa.int16()),  # PCM bit depth; null for lossy codecs
            pa.field("duration_s", pa.float64(), nullable=False),
            pa.field("bytes", pa.int64(), nullable=False),
            pa.field("content_sha1", pa.string(), nullable=False),  # of the decoded PCM
            pa.field("peak_dbfs", pa.float32(), nullable=False),
            pa.field("rms_dbfs", pa.float32(), nullable=False),
            pa.field("clipping_ratio", pa.float32(), nullable=False),
            pa.field("speech_ratio", pa.float32(), nullable=False),
            pa.field("snr_db", pa.float32()),  # null when there is no speech or no pause
            pa.field("language", pa.string()),
            pa.field("transcript", pa.string()),
            pa.field("speaker", pa.string()),
            pa.field("task", pa.string()),
            pa.field("dup_of", pa.string()),  # earlier recording_id with identical content
            *LABEL_FIELDS,
        ]
    ),
    required=(
        "recording_id",
        "source_uri",
        "corpus",
        "container",
        "sample_rate_hz",
        "source_channels",
        "channels",
        "duration_s",
        "bytes",
        "content_sha1",
    ),
    enums=LABEL_ENUMS,
    non_negative=(
        "duration_s",
        "bytes",
        "clipping_ratio",
        "speech_ratio",
        "sample_rate_hz",
        "age",
    ),
)


def recording_id(source_key: str, content_sha1: str) -> str:
    """Stable, relocatable id: hash of the audio's `source_key` (corpus and path relative to the
    listed root, items.source_key) and its content. The same file with the same content gets
    the same id wherever the corpus or the build is mounted."""
    return hashlib.sha1(f"{source_key}\n{content_sha1}".encode()).hexdigest()[:20]
