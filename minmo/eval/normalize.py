"""The text normaliser every transcript goes through before WER / CER, and the unit split.

What it does, in order (the same on reference and hypothesis):

1. Unicode NFKC: full-width forms fold to their ASCII twins (`ＡＢＣ１２３` -> `ABC123`,
   `，` -> `,`), compatibility characters to their plain form.
2. Case: `str.casefold` (`Straße` -> `strasse`).
3. Numbers: digits stay digits and number words stay words; nothing converts between them, so a
   reference `twenty` against a hypothesis `20` is an error (keep both sides in one style). A
   thousands separator between digits is dropped (`1,000` -> `1000`) and a decimal point between
   digits is kept (`3.5`), so that a number stays one word.
4. Punctuation: every Unicode punctuation or symbol character (categories P*, S*) becomes a space,
   except an apostrophe inside a word (`don't`), which is kept (after folding `’` to `'`).
5. Whitespace: runs collapse to one space, ends trimmed.

Units: languages written without spaces between words (`CHARACTER_LANGUAGES`: zh, ja, ko, yue)
are scored by CER on characters with all whitespace removed; every other language by WER on the
space-separated words. Must not: know about models or shards.
"""

from __future__ import annotations

import re
import unicodedata

CHARACTER_LANGUAGES = frozenset({"zh", "ja", "ko", "yue"})
"""ISO 639 codes scored on characters (CER), not words."""

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")
_DECIMAL_MARK = "\u0000"  # keeps a decimal point through the punctuation pass
_INNER_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")
_APOSTROPHE_MARK = "\u0001"


def normalize_text(text: str) -> str:
    """`text` normalised as the module docstring says (case, width, numbers, punctuation,
    whitespace); language-independent."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold()
    text = _THOUSANDS.sub("", text)
    text = _DECIMAL.sub(_DECIMAL_MARK, text)
    text = _INNER_APOSTROPHE.sub(_APOSTROPHE_MARK, text)
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    text = text.replace(_DECIMAL_MARK, ".").replace(_APOSTROPHE_MARK, "'")
    return " ".join(text.split())


def scores_characters(language: str | None) -> bool:
    """Whether `language` (ISO 639, a region suffix allowed: `zh-CN`) is scored by CER."""
    return bool(language) and str(language).lower().replace("_", "-").split("-")[0] in (
        CHARACTER_LANGUAGES
    )


def units(text: str, language: str | None) -> list[str]:
    """The normalised text's scoring units: characters (no whitespace) for the character
    languages, words for the rest."""
    norm = normalize_text(text)
    if scores_characters(language):
        return [c for c in norm if not c.isspace()]
    return norm.split()
