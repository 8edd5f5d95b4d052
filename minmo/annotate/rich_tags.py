"""SenseVoice's rich-transcription tags and how they map onto minmo's label vocabularies.

SenseVoiceSmall decodes every clip to `<|lang|><|EMOTION|><|Event|><|itn|>transcript`, e.g.
`<|en|><|NEUTRAL|><|Speech|><|woitn|>and so my fellow americans`; code-switched audio can
repeat the block before each stretch (`<|zh|>...<|en|>...`). Owns: the tag tables, their
mapping, and `parse_rich`, which splits a decoded string into labels and the plain transcript.
Must not: load a model or know a table (sensevoice.py and pipelines/annotate.py do).

Mapping (the utterance-level tag is the first of its kind; later blocks add events only):

  language  zh, en, ja, ko -> ISO 639-1 as is; yue (Cantonese has no 639-1 code) stays `yue`,
            the code the ingest layouts already use for it; nospeech -> None.
  emotion   HAPPY, SAD, ANGRY, NEUTRAL, FEARFUL, DISGUSTED, SURPRISED -> schemas.labels
            vocabulary through `parse_emotion`; EMO_UNKNOWN -> None (its no-label value).
  events    lower-cased AudioSet-style names: BGM -> music, Applause -> applause,
            Laughter -> laughter, Cry -> crying, Sneeze -> sneeze, Breath -> breathing,
            Cough -> cough, Sing -> singing, Speech_Noise -> noise.
            Dropped: Speech (every segment minmo labels was cut as speech, by VAD or by a
            supervision, so `speech` would be the answer of nearly every `audio_event` sample
            and teach the model nothing; its absence is not evidence either), Event_UNK and GBG
            (the model's "no idea" / garbage classes). A clip whose only event is dropped has
            no event label (None, as `schemas.labels.parse_events` reads an empty list).
  itn       withitn / woitn: how the text was normalised, not a label; dropped.

A tag none of these tables knows (a newer model) is kept out of the transcript and reported in
`RichTranscript.unknown_tags`, never guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.labels import parse_emotion

LANGUAGE_TAGS: dict[str, str | None] = {
    "zh": "zh",
    "en": "en",
    "yue": "yue",
    "ja": "ja",
    "ko": "ko",
    "nospeech": None,
}
"""SenseVoice language tag -> the `language` label (None: no speech, no language)."""

EMOTION_TAGS = ("HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED")
EMOTION_UNKNOWN = "EMO_UNKNOWN"

EVENT_TAGS: dict[str, str | None] = {
    "BGM": "music",
    "Applause": "applause",
    "Laughter": "laughter",
    "Cry": "crying",
    "Sneeze": "sneeze",
    "Breath": "breathing",
    "Cough": "cough",
    "Sing": "singing",
    "Speech_Noise": "noise",
    "Speech": None,
    "Event_UNK": None,
    "GBG": None,
}
"""SenseVoice event tag -> our event name (None: dropped; see the module docstring)."""

TEXTNORM_TAGS = ("withitn", "woitn")

ALL_TAGS: tuple[str, ...] = (
    *LANGUAGE_TAGS,
    *EMOTION_TAGS,
    EMOTION_UNKNOWN,
    *EVENT_TAGS,
    *TEXTNORM_TAGS,
)
"""Every tag name SenseVoiceSmall's tokenizer holds as one piece `<|name|>`."""

TAG_RE = re.compile(r"<\|([^|<>]+)\|>")


def tag_piece(name: str) -> str:
    """The tokenizer piece of a tag name: `en` -> `<|en|>`."""
    return f"<|{name}|>"


@dataclass(frozen=True)
class RichTranscript:
    """One decoded SenseVoice string, split into its tags and its words."""

    transcript: str
    """The words, tags removed, whitespace collapsed ("" when the model heard none)."""
    language_tag: str | None = None
    emotion_tag: str | None = None
    event_tags: tuple[str, ...] = ()
    """Every event tag of the string in order, repeats removed (dropped ones included)."""
    unknown_tags: tuple[str, ...] = ()

    @property
    def language(self) -> str | None:
        return LANGUAGE_TAGS.get(self.language_tag) if self.language_tag else None

    @property
    def emotion(self) -> str | None:
        """A word of schemas.labels.EMOTIONS, or None (EMO_UNKNOWN, or no emotion tag)."""
        return parse_emotion(self.emotion_tag) if self.emotion_tag else None

    @property
    def event_labels(self) -> list[tuple[str, str]]:
        """(tag, event name) of each kept event tag, in order."""
        return [(t, name) for t in self.event_tags if (name := EVENT_TAGS.get(t)) is not None]

    @property
    def audio_events(self) -> list[str] | None:
        """The kept event names (None when none is kept)."""
        names = list(dict.fromkeys(name for _, name in self.event_labels))
        return names or None


def parse_rich(text: str) -> RichTranscript:
    """Split a SenseVoice output string into its labels and its plain transcript.

    The first language and emotion tags are the utterance's (they come from the model's query
    frames); events are collected from every block."""
    language = emotion = None
    events: list[str] = []
    unknown: list[str] = []
    for match in TAG_RE.finditer(text):
        name = match.group(1)
        if name in LANGUAGE_TAGS:
            language = language or name
        elif name in EMOTION_TAGS or name == EMOTION_UNKNOWN:
            emotion = emotion or name
        elif name in EVENT_TAGS:
            if name not in events:
                events.append(name)
        elif name not in TEXTNORM_TAGS and name not in unknown:
            unknown.append(name)
    words = " ".join(TAG_RE.sub(" ", text).split())
    return RichTranscript(words, language, emotion, tuple(events), tuple(unknown))
