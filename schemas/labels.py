"""Per-utterance labels a corpus may carry, their closed vocabularies and how raw values map
onto them: the contract that ingest (human labels), `annotate` (model labels) and the sample
builders share.

Owns: the label column names and Arrow types (`LABEL_FIELDS`, added to `recordings` v3 and
`segments` v2), the emotion and gender vocabularies, the built-in mappings of the common corpus
conventions onto them, and the parsers every reader applies (`parse_*`). A parser returns the
normalised value, None for a value that means "no label" by the corpus' own convention (IEMOCAP
`xxx`, SenseVoice `EMO_UNKNOWN`, a blank cell), or raises `LabelError` whose message the caller
puts in a `bad_label` quarantine row. Must not: know any layout or file.

Emotion vocabulary (`EMOTIONS`), and what maps onto it (case-insensitive):

  neutral     neutral, neu, n, 01 (RAVDESS), NEU (CREMA-D), Neutral (ESD)
  calm        calm, 02 (RAVDESS)
  happy       happy, happiness, joy (MELD), hap, h, 03 (RAVDESS), HAP (CREMA-D)
  sad         sad, sadness, sa (SAVEE), 04 (RAVDESS), SAD
  angry       angry, anger, ang, a, 05 (RAVDESS), ANG
  fearful     fearful, fear, fea, f, afraid, 06 (RAVDESS), FEA
  disgusted   disgusted, disgust, dis, d, 07 (RAVDESS), DIS
  surprised   surprised, surprise, sur, su, 08 (RAVDESS)
  excited     excited, exc (IEMOCAP)
  frustrated  frustrated, fru (IEMOCAP)
  other       other, oth (IEMOCAP)
  no label    xxx (IEMOCAP: annotators disagreed), emo_unknown (SenseVoice), unknown, blank

Gender (`GENDERS`): female (f, female, woman, w), male (m, male, man), other; blank, `unknown`,
`u`, `n/a` mean no label. Age: years as a number (`34`, `34.0`), or a Common Voice decade word
(`teens` .. `nineties`), stored as the decade's middle year. Audio events: a list of event
names, each stripped and lower-cased (`Laughter` -> `laughter`; an open set: corpora name events
their own way). Translations: a list of `{language, text}` objects (`lang` is accepted for
`language`); both must be non-blank strings.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from typing import Any

import pyarrow as pa


class LabelError(ValueError):
    """A label value that maps onto nothing: quarantined as `bad_label` with this message."""


class LabelSource(str, enum.Enum):
    """Which labels a stage-1 task reads (the shards step's `label_source`, per task)."""

    HUMAN = "human"  # the corpus' own labels only
    MODEL = "model"  # the `annotations` table's pseudo-labels only
    HUMAN_THEN_MODEL = "human_then_model"  # the corpus' label, else the model's


class Emotion(str, enum.Enum):
    NEUTRAL = "neutral"
    CALM = "calm"
    HAPPY = "happy"
    SAD = "sad"
    ANGRY = "angry"
    FEARFUL = "fearful"
    DISGUSTED = "disgusted"
    SURPRISED = "surprised"
    EXCITED = "excited"
    FRUSTRATED = "frustrated"
    OTHER = "other"


EMOTIONS = tuple(e.value for e in Emotion)
"""The closed emotion vocabulary: every `emotion` cell of every table holds one of these."""

_EMOTION_ALIASES: dict[str, tuple[str, ...]] = {
    "neutral": ("neutral", "neu", "n", "01"),
    "calm": ("calm", "02"),
    "happy": ("happy", "happiness", "joy", "hap", "h", "03"),
    "sad": ("sad", "sadness", "sa", "04"),
    "angry": ("angry", "anger", "ang", "a", "05"),
    "fearful": ("fearful", "fear", "fea", "f", "afraid", "06"),
    "disgusted": ("disgusted", "disgust", "dis", "d", "07"),
    "surprised": ("surprised", "surprise", "sur", "su", "08"),
    "excited": ("excited", "exc"),
    "frustrated": ("frustrated", "fru"),
    "other": ("other", "oth"),
}
EMOTION_MAP: Mapping[str, str] = {
    alias: emotion for emotion, aliases in _EMOTION_ALIASES.items() for alias in aliases
}
"""Lower-cased corpus value -> vocabulary word (RAVDESS / CREMA-D / IEMOCAP / ESD / MELD)."""
EMOTION_NO_LABEL = frozenset({"", "xxx", "emo_unknown", "unknown", "none", "n/a"})


class Gender(str, enum.Enum):
    FEMALE = "female"
    MALE = "male"
    OTHER = "other"


GENDERS = tuple(g.value for g in Gender)
GENDER_MAP: Mapping[str, str] = {
    "f": "female",
    "female": "female",
    "woman": "female",
    "w": "female",
    "m": "male",
    "male": "male",
    "man": "male",
    "other": "other",
}
GENDER_NO_LABEL = frozenset({"", "unknown", "u", "n/a", "none"})

AGE_DECADES: Mapping[str, int] = {
    "teens": 15,
    "twenties": 25,
    "thirties": 35,
    "forties": 45,
    "fifties": 55,
    "sixties": 65,
    "seventies": 75,
    "eighties": 85,
    "nineties": 95,
}
"""Common Voice's age buckets -> the decade's middle year."""
MAX_AGE = 120

TRANSLATION_TYPE = pa.list_(pa.struct([("language", pa.string()), ("text", pa.string())]))

LABEL_FIELDS: tuple[pa.Field, ...] = (
    pa.field("emotion", pa.string()),  # one of EMOTIONS
    pa.field("gender", pa.string()),  # one of GENDERS
    pa.field("age", pa.int16()),  # years
    pa.field("audio_events", pa.list_(pa.string())),  # lower-cased event names
    pa.field("translations", TRANSLATION_TYPE),  # speech-translation targets
    pa.field("dialect", pa.string()),  # free text, as the corpus names it
)
"""The label columns of `recordings` (v3) and `segments` (v2); null where a source has none."""
LABEL_NAMES = tuple(f.name for f in LABEL_FIELDS)
LABEL_ENUMS: dict[str, type[enum.Enum]] = {"emotion": Emotion, "gender": Gender}
"""The label columns with a closed vocabulary, for the tables' contracts to check."""


def _text(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise LabelError(f"{what} {value!r} is a {type(value).__name__}, not a word")
    return str(value).strip()


def parse_emotion(value: Any, extra: Mapping[str, str] | None = None) -> str | None:
    """A corpus' emotion value -> a word of EMOTIONS (None: no label). `extra` maps further
    lower-cased values (a job's own convention) and is consulted first."""
    if value is None:
        return None
    word = _text(value, "emotion").lower()
    if extra and word in extra:
        mapped = extra[word]
        if mapped not in EMOTIONS:
            raise LabelError(f"emotion map sends {word!r} to {mapped!r}, not one of {EMOTIONS}")
        return mapped
    if word in EMOTION_NO_LABEL:
        return None
    if word in EMOTION_MAP:
        return EMOTION_MAP[word]
    if word.isdigit() and word.zfill(2) in EMOTION_MAP:  # RAVDESS codes written as 1..8
        return EMOTION_MAP[word.zfill(2)]
    raise LabelError(f"unknown emotion {value!r} (known: {', '.join(EMOTIONS)} and their codes)")


def parse_gender(value: Any) -> str | None:
    if value is None:
        return None
    word = _text(value, "gender").lower()
    if word in GENDER_NO_LABEL:
        return None
    if word in GENDER_MAP:
        return GENDER_MAP[word]
    raise LabelError(f"unknown gender {value!r} (known: {', '.join(GENDERS)}, m, f)")


def parse_age(value: Any) -> int | None:
    """Years as an int; a Common Voice decade word gives the decade's middle year."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise LabelError(f"age {value!r} is not a number")
    if isinstance(value, str):
        word = value.strip().lower()
        if word in AGE_DECADES:
            return AGE_DECADES[word]
        try:
            value = float(word)
        except ValueError:
            raise LabelError(f"age {value!r} is not a number") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LabelError(f"age {value!r} is not a number")
    if not 0 <= value <= MAX_AGE:
        raise LabelError(f"age {value!r} is outside 0..{MAX_AGE} years")
    return int(round(value))


def parse_events(value: Any) -> list[str] | None:
    """A list of event names (a JSON list in a CSV cell is read as one); [] is no label."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise LabelError(f"audio_events {value!r} is not a list") from None
    if not isinstance(value, (list, tuple)):
        raise LabelError(f"audio_events {value!r} is a {type(value).__name__}, not a list")
    events = []
    for event in value:
        if not isinstance(event, str) or not event.strip():
            raise LabelError(f"audio_events holds {event!r}, not an event name")
        name = event.strip().lower()
        if name not in events:
            events.append(name)
    return events or None


def parse_translations(value: Any) -> list[dict[str, str]] | None:
    """A list of {language, text}; a JSON list in a CSV cell is read as one."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise LabelError(f"translations {value!r} is not a list") from None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise LabelError(f"translations {value!r} is a {type(value).__name__}, not a list")
    out = []
    for entry in value:
        if not isinstance(entry, Mapping):
            raise LabelError(f"translation {entry!r} is not an object with language and text")
        language = entry.get("language", entry.get("lang"))
        text = entry.get("text")
        if not isinstance(language, str) or not language.strip():
            raise LabelError(f"translation {dict(entry)!r} has no language")
        if not isinstance(text, str) or not text.strip():
            raise LabelError(f"translation {dict(entry)!r} has no text")
        out.append({"language": language.strip(), "text": text.strip()})
    return out or None


def parse_dialect(value: Any) -> str | None:
    if value is None:
        return None
    word = _text(value, "dialect")
    return word or None


PARSERS = {
    "emotion": parse_emotion,
    "gender": parse_gender,
    "age": parse_age,
    "audio_events": parse_events,
    "translations": parse_translations,
    "dialect": parse_dialect,
}
"""Label column -> its parser (every one: raw value -> normalised value | None, or LabelError)."""
