"""The quarantine table: every input a step refused, with a closed reason code and a detail.

Nothing a step cannot use is dropped silently: it lands here, and the step's summary counts it.
"""

from __future__ import annotations

import enum
from typing import Any

import pyarrow as pa

from schemas._table import TableContract


class ReasonCode(str, enum.Enum):
    """Why an input was refused. Closed: a new failure mode needs a new member here."""

    MISSING_FILE = "missing_file"  # a manifest or listing points at nothing
    READ_ERROR = "read_error"  # the file exists but its bytes could not be read
    NOT_A_FILE = "not_a_file"  # an audio name on a directory, FIFO, socket or device
    SYMLINK_LOOP = "symlink_loop"  # a symbolic link that resolves back to itself
    BAD_FILENAME = "bad_filename"  # a file name that is not valid UTF-8
    UNDECODABLE = "undecodable"  # no decoder could make audio of the bytes
    EMPTY_AUDIO = "empty_audio"  # decoded to zero samples
    TOO_SHORT = "too_short"  # shorter than the configured minimum
    TOO_LONG = "too_long"  # longer than the configured maximum
    NON_FINITE_SAMPLES = "non_finite_samples"  # NaN or Inf in the decoded samples
    UNSUPPORTED_SAMPLE_RATE = "unsupported_sample_rate"  # below the configured minimum rate
    UNSUPPORTED_CHANNELS = "unsupported_channels"  # more channels than configured
    BAD_TRANSCRIPT_ENCODING = "bad_transcript_encoding"  # transcript bytes are not UTF-8
    EMPTY_TRANSCRIPT = "empty_transcript"  # a transcript was given but is blank
    BAD_MANIFEST_ROW = "bad_manifest_row"  # a manifest row lacks a path or cannot be parsed
    UNSUPPORTED_SOURCE = "unsupported_source"  # e.g. a Kaldi wav.scp pipe command
    BAD_SEGMENT = "bad_segment"  # a source supervision lies outside its audio or is inverted
    TEXT_AUDIO_MISMATCH = "text_audio_mismatch"  # far more text than the audio could carry
    NOT_MULTICHANNEL = (
        "not_multichannel"  # a one-channel recording given to per-channel diarization
    )
    NO_SPEECH = "no_speech"  # diarization found no speech at all
    SINGLE_SPEAKER = "single_speaker"  # a conversation in which only one speaker talks
    INDISTINCT_SPEAKERS = "indistinct_speakers"  # fewer distinct voices than the hints require
    NOT_TWO_PARTY = "not_two_party"  # duplex labels need two or more voices; one was found
    BAD_DIALOGUE = "bad_dialogue"  # a chat row with no turns, unknown roles or empty text
    TTS_FAILED = "tts_failed"  # the TTS engine could not speak a line (after retries)
    SAMPLE_FAILED = "sample_failed"  # a shard sample's audio or tokens could not be made
    BAD_LABEL = "bad_label"  # a label value maps onto nothing (schemas/labels.py); audio kept
    # the channel files of one multi-source recording disagree in length beyond the tolerance,
    # or in sample rate (minmo/audio/load.py)
    CHANNEL_LENGTH_MISMATCH = "channel_length_mismatch"
    # a multi-source recording's shorter channel files were padded with silence to the longest,
    # within the tolerance; a note, the audio is kept
    CHANNELS_PADDED = "channels_padded"
    INTERNAL_ERROR = "internal_error"  # a bug: the step failed on this input; detail has it


QUARANTINE = TableContract(
    name="quarantine",
    version=2,
    schema=pa.schema(
        [
            pa.field("source_uri", pa.string(), nullable=False),
            pa.field("step", pa.string(), nullable=False),
            pa.field("reason_code", pa.string(), nullable=False),
            pa.field("detail", pa.string()),
            pa.field("item_key", pa.string()),  # utterance / row id inside a manifest, when any
            # v2: the refused source's relocatable key (pipelines.ingest.items.source_key), set
            # by ingest so that a moved corpus is still known as seen; null for other steps
            pa.field("source_key", pa.string()),
        ]
    ),
    required=("source_uri", "step", "reason_code"),
    enums={"reason_code": ReasonCode},
)


def quarantine_row(
    source_uri: str,
    reason_code: str,
    detail: str,
    step: str = "ingest",
    item_key: str | None = None,
    source_key: str | None = None,
) -> dict[str, Any]:
    """A row of the quarantine table (schemas.quarantine.QUARANTINE)."""
    return {
        "source_uri": source_uri,
        "step": step,
        "reason_code": reason_code,
        "detail": detail,
        "item_key": item_key,
        "source_key": source_key,
    }


class Rejected(Exception):
    """An item that cannot be ingested, with its quarantine reason."""

    def __init__(self, reason: ReasonCode, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
