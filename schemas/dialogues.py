"""The dialogues table: text conversations to be spoken, one row per turn.

Read from JSONL in the common chat layouts (ChatML `messages`, ShareGPT `conversations`, Alpaca
`instruction`/`input`/`output`); `layout` records which. Style columns are optional instructions
for the TTS (see minmo/tts/base.py `Style`).
"""

from __future__ import annotations

import enum

import pyarrow as pa

from schemas._table import TableContract


class Role(str, enum.Enum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class ChatLayout(str, enum.Enum):
    CHATML = "chatml"
    SHAREGPT = "sharegpt"
    ALPACA = "alpaca"


DIALOGUES = TableContract(
    name="dialogues",
    version=1,
    schema=pa.schema(
        [
            pa.field("dialogue_id", pa.string(), nullable=False),
            pa.field("turn_index", pa.int32(), nullable=False),
            pa.field("role", pa.string(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("layout", pa.string(), nullable=False),
            pa.field("source_uri", pa.string(), nullable=False),
            pa.field("style_instruction", pa.string()),  # free text, e.g. "speak slowly, sad"
            pa.field("emotion", pa.string()),
            pa.field("speaking_rate", pa.float32()),  # multiplier, 1.0 = normal
            pa.field("pitch", pa.float32()),  # multiplier, 1.0 = normal
            pa.field("dialect", pa.string()),
            pa.field("language", pa.string()),
        ]
    ),
    required=("dialogue_id", "turn_index", "role", "text", "layout", "source_uri"),
    enums={"role": Role, "layout": ChatLayout},
    non_negative=("turn_index", "speaking_rate", "pitch"),
)
