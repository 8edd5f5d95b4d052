"""The s2s_samples table: stage-3 speech-to-speech material, one row per assistant reply.

Each row pairs the user's audio (synthesised, or a real ingested utterance) with the assistant's
text and its synthesised audio (from which the shard step takes speech tokens). Audio is
referenced by URI into the build directory (FLAC, 16 kHz) or the source corpus.

v2 (relocatable builds): `user_audio_key`, the user audio's recording `source_key`, so that
shard provenance names it without a path even when it lives in another unit (a real query).
"""

from __future__ import annotations

import enum

import pyarrow as pa

from schemas._table import TableContract


class S2SRecipe(str, enum.Enum):
    TTS_DIALOGUE = "tts_dialogue"  # both sides synthesised from a text dialogue
    ASR_QUERY = "asr_query"  # a real transcribed utterance as the query, the reply synthesised


S2S_SAMPLES = TableContract(
    name="s2s_samples",
    version=2,
    schema=pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("dialogue_id", pa.string(), nullable=False),
            pa.field("turn_index", pa.int32(), nullable=False),  # the assistant turn's index
            pa.field("recipe", pa.string(), nullable=False),
            pa.field("language", pa.string()),
            pa.field("history_json", pa.string()),  # earlier turns as ChatML text messages
            pa.field("user_text", pa.string(), nullable=False),
            # a recording's source_uri: a build key (`build:...`) for synthesized audio
            pa.field("user_audio_uri", pa.string(), nullable=False),
            pa.field("user_audio_key", pa.string()),  # its recording's source_key; null before v2
            pa.field("user_start_s", pa.float64(), nullable=False),
            pa.field("user_end_s", pa.float64(), nullable=False),
            pa.field("user_voice", pa.string()),
            pa.field("assistant_text", pa.string(), nullable=False),
            pa.field("assistant_audio_uri", pa.string(), nullable=False),
            pa.field("assistant_duration_s", pa.float64(), nullable=False),
            pa.field("assistant_voice", pa.string(), nullable=False),
            pa.field("style_instruction", pa.string()),
        ]
    ),
    required=(
        "sample_id",
        "dialogue_id",
        "turn_index",
        "recipe",
        "user_text",
        "user_audio_uri",
        "assistant_text",
        "assistant_audio_uri",
        "assistant_voice",
    ),
    enums={"recipe": S2SRecipe},
    non_negative=("turn_index", "user_start_s", "user_end_s", "assistant_duration_s"),
)
