"""Text dialogues to be spoken: JSONL chat files → rows of the `dialogues` table, one per turn.

Owns: reading ChatML / ShareGPT / Alpaca JSONL (`read_dialogues`), the per-line layout detection,
and turning a TTS style instruction (free text or dict) into a `Style` (`parse_style`).
Must not: synthesise audio or write tables; the synthesize step does both.

`read_dialogues` yields one record per non-blank line, tagged so the caller can route it:

    ("dialogue", [row, row, ...])   # every turn of one dialogue, turn_index 0..n-1, in order
    ("quarantine", row)             # a QUARANTINE row, reason_code "bad_dialogue"

A dialogue is kept whole or refused whole: a TTS run over half a conversation is worse than none.
Output depends only on the file's bytes and its source URI, so reruns give identical rows and ids;
ids depend only on the bytes and the file's name, not on where it is mounted (`_dialogue_id`).

Accepted line layouts (`layout="auto"` picks per line by key):

    {"messages": [{"role": "system"|"user"|"assistant", "content": "...", "style": ...}]}
    {"conversations": [{"from": "human"|"user"|"gpt"|"assistant"|"system", "value": "..."}]}
    {"instruction": "...", "input": "..." (optional), "output": "..."}

plus, on any layout, optional `id`, `language` and `style` (the style of every assistant turn; a
message's own `style` replaces it for that message, on any role).
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

from minmo.io.fs import open_filesystem, uri_scheme
from minmo.tts.base import Style
from schemas.dialogues import ChatLayout, Role
from schemas.quarantine import ReasonCode, quarantine_row

DIALOGUE_LAYOUTS = ("auto", "chatml", "sharegpt", "alpaca")

STEP = "synthesize"

DialogueRecord = (
    tuple[Literal["dialogue"], list[dict[str, Any]]] | tuple[Literal["quarantine"], dict[str, Any]]
)

# ---------------------------------------------------------------------------------------------
# Style vocabulary. Deliberately small: a word not listed here is not guessed at; it stays in
# `Style.instruction`, which instruct-capable TTS models read in full.

# Speaking-rate words → multiplier; "very" before one of them pushes it further (_VERY).
RATE_WORDS = {
    "slow": 0.8,
    "slowly": 0.8,
    "slower": 0.8,
    "leisurely": 0.8,
    "fast": 1.25,
    "faster": 1.25,
    "quick": 1.25,
    "quickly": 1.25,
    "rapidly": 1.25,
    "hurriedly": 1.25,
}
_VERY = {"slow": 0.7, "slowly": 0.7, "fast": 1.4, "quickly": 1.4}

# Pitch words → multiplier.
PITCH_WORDS = {
    "high": 1.2,
    "higher": 1.2,
    "high-pitched": 1.2,
    "squeaky": 1.3,
    "low": 0.85,
    "lower": 0.85,
    "deep": 0.85,
    "low-pitched": 0.85,
}

# Emotion words (adjective or adverb) → the emotion name Style uses. The first one found wins.
EMOTION_WORDS = {
    "happy": "happy",
    "happily": "happy",
    "cheerful": "happy",
    "cheerfully": "happy",
    "joyful": "happy",
    "sad": "sad",
    "sadly": "sad",
    "unhappy": "sad",
    "angry": "angry",
    "angrily": "angry",
    "annoyed": "angry",
    "calm": "calm",
    "calmly": "calm",
    "relaxed": "calm",
    "gently": "calm",
    "excited": "excited",
    "excitedly": "excited",
    "enthusiastic": "excited",
    "enthusiastically": "excited",
    "surprised": "surprised",
    "fearful": "fearful",
    "scared": "fearful",
    "whisper": "whisper",
    "whispering": "whisper",
    "whispered": "whisper",
}

# Accent / dialect phrases → language tag. Longest phrase wins, so "mexican spanish" and
# "latin american spanish" both beat a bare "spanish" (which is not a dialect, so not listed).
# No "us"/"uk": "us" is an ordinary word ("read it to us").
DIALECT_PHRASES = {
    "british": "en-gb",
    "english accent": "en-gb",
    "scottish": "en-gb-scotland",
    "american": "en-us",
    "australian": "en-au",
    "irish": "en-ie",
    "indian english": "en-in",
    "mexican": "es-419",
    "mexican spanish": "es-419",
    "latin american": "es-419",
    "latin american spanish": "es-419",
    "castilian": "es-es",
    "spain spanish": "es-es",
    "brazilian": "pt-br",
    "brazilian portuguese": "pt-br",
    "european portuguese": "pt-pt",
    "canadian french": "fr-ca",
    "quebec": "fr-ca",
    "quebecois": "fr-ca",
    "swiss german": "de-ch",
    "austrian": "de-at",
    "cantonese": "yue",
    "mandarin": "zh-cn",
    "taiwanese": "zh-tw",
}
_DIALECT_BY_LENGTH = sorted(DIALECT_PHRASES, key=lambda p: (-len(p.split()), p))

# Keys a dict-form style may carry; anything else is kept only in the instruction text.
_STYLE_KEYS = ("emotion", "speaking_rate", "pitch", "dialect", "instruction")

_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def parse_style(instruction: str | Mapping[str, Any] | None) -> Style:
    """The `Style` an instruction asks for.

    Free text ("speak slowly and sadly", "in a British accent") is matched word by word against
    RATE_WORDS, PITCH_WORDS, EMOTION_WORDS and DIALECT_PHRASES; `instruction` keeps the text
    as given. A dict takes `emotion`, `speaking_rate`, `pitch`, `dialect` literally, after the
    free text of its optional `instruction` key; `Style.instruction` is then the dict as JSON
    (sorted keys). Free text never fails; a dict with a non-positive or non-numeric rate or pitch,
    or a non-string emotion/dialect, raises ValueError (read_dialogues quarantines the dialogue).
    """
    if instruction is None:
        return Style()
    if isinstance(instruction, str):
        return _parse_text(instruction)
    if not isinstance(instruction, Mapping):
        raise ValueError(f"style must be a string or an object, not {type(instruction).__name__}")
    text = instruction.get("instruction")
    if text is not None and not isinstance(text, str):
        raise ValueError("style.instruction must be a string")
    base = _parse_text(text or "")
    fields: dict[str, Any] = {
        "speaking_rate": base.speaking_rate,
        "pitch": base.pitch,
        "emotion": base.emotion,
        "dialect": base.dialect,
    }
    for key in ("speaking_rate", "pitch"):
        value = instruction.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"style.{key} must be a number, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"style.{key} must be a positive multiplier, got {value!r}")
        fields[key] = float(value)
    for key in ("emotion", "dialect"):
        value = instruction.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"style.{key} must be a non-empty string, got {value!r}")
        fields[key] = value.strip().lower()
    as_json = json.dumps(dict(instruction), sort_keys=True, ensure_ascii=False)
    return Style(**fields, instruction=as_json)


def _parse_text(text: str) -> Style:
    if not text.strip():
        return Style()
    words = _WORD.findall(text.lower())
    rate = pitch = emotion = None
    for i, word in enumerate(words):
        if rate is None and word in RATE_WORDS:
            very = i > 0 and words[i - 1] in ("very", "really", "extra")
            rate = _VERY.get(word, RATE_WORDS[word]) if very else RATE_WORDS[word]
        elif pitch is None and word in PITCH_WORDS:
            pitch = PITCH_WORDS[word]
        elif emotion is None and word in EMOTION_WORDS:
            emotion = EMOTION_WORDS[word]
    joined = f" {' '.join(words)} "
    dialect = next(
        (DIALECT_PHRASES[p] for p in _DIALECT_BY_LENGTH if f" {p} " in joined),
        None,
    )
    return Style(
        speaking_rate=rate, pitch=pitch, emotion=emotion, dialect=dialect, instruction=text
    )


# ---------------------------------------------------------------------------------------------
# Reading.

_SHAREGPT_ROLES = {
    "human": Role.USER,
    "user": Role.USER,
    "gpt": Role.ASSISTANT,
    "assistant": Role.ASSISTANT,
    "system": Role.SYSTEM,
}
_CHATML_ROLES = {r.value: r for r in Role}


class _Refused(Exception):
    """A line that cannot become a dialogue; the message is the quarantine detail, `item_key`
    the dialogue id once it is known."""

    item_key: str | None = None


def read_dialogues(
    path_or_uri: str, layout: str = "auto", storage_options: Mapping[str, Any] | None = None
) -> Iterator[DialogueRecord]:
    """Stream `("dialogue", rows)` / `("quarantine", row)` records from a JSONL file.

    Local paths are opened directly; URIs (`s3://...`, `file://...`) through pyarrow.fs, with
    `storage_options` (e.g. an S3 endpoint) for their filesystem. Lines are
    numbered from 1; blank lines are skipped. A dialogue without `id` gets an id from the
    file's name, the line number and the line's bytes (`_dialogue_id`): the same file under
    another directory, bucket or mount keeps its ids, and so its audio and shards.
    A repeated `id` is quarantined (its first occurrence is kept), since TTS keys derive from it.
    `layout` other than "auto" forces one layout for every line. Bad input never raises: a missing
    file does (FileNotFoundError), and so does an unknown `layout` (ValueError).
    """
    if layout not in DIALOGUE_LAYOUTS:
        near = difflib.get_close_matches(layout, DIALOGUE_LAYOUTS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown dialogue layout {layout!r}, expected {DIALOGUE_LAYOUTS}{hint}")
    source_uri, lines = _open_lines(path_or_uri, storage_options or {})
    seen: set[str] = set()
    for line_no, raw in lines:
        if not raw.strip():
            continue
        item_key = f"line {line_no}"
        try:
            record = _parse_line(raw, line_no, source_uri, layout)
            item_key = record[0]["dialogue_id"]
            if item_key in seen:
                raise _Refused(f"duplicate dialogue id {item_key!r}")
            seen.add(item_key)
        except _Refused as refused:
            item_key = refused.item_key or item_key
            detail = f"line {line_no}: {refused}"
            yield (
                "quarantine",
                quarantine_row(
                    source_uri, ReasonCode.BAD_DIALOGUE.value, detail, step=STEP, item_key=item_key
                ),
            )
            continue
        yield ("dialogue", record)


def split_records(
    records: Iterable[DialogueRecord],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(dialogue turn rows, quarantine rows) from `read_dialogues` records, order kept."""
    turns: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    for kind, payload in records:
        if kind == "dialogue":
            turns.extend(payload)  # type: ignore[arg-type]
        else:
            refused.append(payload)  # type: ignore[arg-type]
    return turns, refused


def _open_lines(
    path_or_uri: str, storage_options: Mapping[str, Any]
) -> tuple[str, Iterator[tuple[int, bytes]]]:
    if uri_scheme(path_or_uri) is None:
        source_uri = os.path.abspath(os.path.expanduser(path_or_uri))
        handle: Any = open(source_uri, "rb")  # noqa: SIM115 - closed by _numbered
    else:
        source_uri = path_or_uri
        fs, path = open_filesystem(path_or_uri, **storage_options)
        handle = io.BufferedReader(fs.open_input_stream(path), buffer_size=1 << 20)
    return source_uri, _numbered(handle)


def _numbered(handle: Any) -> Iterator[tuple[int, bytes]]:
    with handle:
        for line_no, line in enumerate(handle, start=1):
            yield line_no, line.rstrip(b"\r\n")


def _parse_line(raw: bytes, line_no: int, source_uri: str, layout: str) -> list[dict[str, Any]]:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _Refused(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise _Refused(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise _Refused(f"expected a JSON object, got {type(obj).__name__}")
    chosen = _detect(obj) if layout == "auto" else ChatLayout(layout)
    if chosen is None:
        raise _Refused(
            "no recognised layout: expected 'messages' (chatml), 'conversations' (sharegpt) or "
            f"'instruction' + 'output' (alpaca); keys are {sorted(obj)}"
        )
    dialogue_id = _dialogue_id(obj, source_uri, line_no, raw)
    try:
        return _rows(obj, chosen, dialogue_id, source_uri)
    except _Refused as refused:
        # A hashed id means nothing to a reader of the quarantine table; "line N" does.
        if obj.get("id") is not None:
            refused.item_key = dialogue_id
        raise


def _rows(
    obj: dict[str, Any], chosen: ChatLayout, dialogue_id: str, source_uri: str
) -> list[dict[str, Any]]:
    language = obj.get("language")
    if language is not None and (not isinstance(language, str) or not language.strip()):
        raise _Refused(f"'language' must be a non-empty string, got {language!r}")
    turns = _alpaca_turns(obj) if chosen is ChatLayout.ALPACA else _message_turns(obj, chosen)
    roles = {role for role, _, _ in turns}
    for needed in (Role.USER, Role.ASSISTANT):
        if needed not in roles:
            raise _Refused(f"no {needed.value} turn")
    dialogue_style = _style(obj.get("style"), "dialogue style") or Style()
    rows = []
    for index, (role, text, message_style) in enumerate(turns):
        if message_style is not None:
            style = message_style
        elif role is Role.ASSISTANT:
            style = dialogue_style
        else:
            style = Style()
        rows.append(
            {
                "dialogue_id": dialogue_id,
                "turn_index": index,
                "role": role.value,
                "text": text,
                "layout": chosen.value,
                "source_uri": source_uri,
                "style_instruction": style.instruction,
                "emotion": style.emotion,
                "speaking_rate": style.speaking_rate,
                "pitch": style.pitch,
                "dialect": style.dialect,
                "language": language.strip() if language else None,
            }
        )
    return rows


def _detect(obj: dict[str, Any]) -> ChatLayout | None:
    if "messages" in obj:
        return ChatLayout.CHATML
    if "conversations" in obj:
        return ChatLayout.SHAREGPT
    if "instruction" in obj and "output" in obj:
        return ChatLayout.ALPACA
    return None


def _dialogue_id(obj: dict[str, Any], source_uri: str, line_no: int, raw: bytes) -> str:
    """The row's own `id`, else sha1(file name # line number \n line bytes)[:16].

    The file's name is its last path component: the listed file is its own root, so that is
    its path relative to the root (`chats.jsonl` in /data/a or s3://bucket/b gives the same
    ids). The line's bytes join the hash so that two different files that share a name cannot
    share ids (one would shadow the other); an identical line is the same dialogue anyway."""
    given = obj.get("id")
    if given is None:
        name = source_uri.rstrip("/").rsplit("/", 1)[-1]
        return hashlib.sha1(f"{name}#{line_no}\n".encode() + raw).hexdigest()[:16]
    if isinstance(given, bool) or not isinstance(given, str | int) or not str(given).strip():
        raise _Refused(f"'id' must be a non-empty string or an integer, got {given!r}")
    return str(given).strip()


def _style(value: Any, where: str) -> Style | None:
    if value is None:
        return None
    try:
        return parse_style(value)
    except ValueError as exc:
        raise _Refused(f"{where}: {exc}") from None


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _Refused(f"{where}: content must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _Refused(f"{where}: empty content")
    return value.strip()


def _message_turns(obj: dict[str, Any], layout: ChatLayout) -> list[tuple[Role, str, Style | None]]:
    if layout is ChatLayout.CHATML:
        key, role_key, text_key, roles = "messages", "role", "content", _CHATML_ROLES
    else:
        key, role_key, text_key, roles = "conversations", "from", "value", _SHAREGPT_ROLES
    messages = obj.get(key)
    if not isinstance(messages, list):
        raise _Refused(f"'{key}' must be a list (layout {layout.value})")
    if not messages:
        raise _Refused(f"'{key}' is empty")
    turns = []
    for i, message in enumerate(messages):
        where = f"message {i}"
        if not isinstance(message, dict):
            raise _Refused(f"{where}: expected an object, got {type(message).__name__}")
        role = roles.get(message.get(role_key))  # type: ignore[arg-type]
        if role is None:
            raise _Refused(
                f"{where}: unknown {role_key} {message.get(role_key)!r}, expected one of "
                f"{sorted(roles)}"
            )
        text = _text(message.get(text_key), where)
        turns.append((role, text, _style(message.get("style"), f"{where} style")))
    return turns


def _alpaca_turns(obj: dict[str, Any]) -> list[tuple[Role, str, Style | None]]:
    instruction = _text(obj.get("instruction"), "instruction")
    extra = obj.get("input")
    if extra is not None and not isinstance(extra, str):
        raise _Refused(f"input: must be a string, got {type(extra).__name__}")
    user = f"{instruction}\n\n{extra.strip()}" if extra and extra.strip() else instruction
    return [(Role.USER, user, None), (Role.ASSISTANT, _text(obj.get("output"), "output"), None)]
