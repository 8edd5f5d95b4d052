"""Instruction templates per task (jobs/prompts/tasks.yaml), chosen per sample by seeded hash.

Owns loading and checking the template file and picking one paraphrase per sample so that a rerun
picks the same one and the choice does not depend on processing order. Must not know about tasks'
data: builders pass the fields a template may use.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "jobs" / "prompts" / "tasks.yaml"
FIELDS = frozenset({"language", "target_language", "hotwords", "instruction", "text"})

# ISO 639-1 -> English name, for templates that name a language.
LANGUAGE_NAMES = {
    "en": "English",
    "de": "German",
    "es": "Spanish",
    "fr": "French",
    "zh": "Chinese",
    "ja": "Japanese",
    "ko": "Korean",
    "yue": "Cantonese",
    "it": "Italian",
    "pt": "Portuguese",
    "ru": "Russian",
    "nl": "Dutch",
}


def language_name(code: str | None) -> str:
    if not code:
        return "unknown"
    base = code.split("-")[0].lower()
    return LANGUAGE_NAMES.get(code, LANGUAGE_NAMES.get(base, code))


@dataclass(frozen=True)
class PromptBook:
    """Task -> paraphrases; `choose` picks one by sha256(seed, sample id)."""

    templates: dict[str, tuple[str, ...]]
    seed: int = 0

    @classmethod
    def load(cls, path: str | Path | None = None, seed: int = 0) -> PromptBook:
        path = Path(path) if path else DEFAULT_PROMPTS
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping task -> list of templates")
        templates: dict[str, tuple[str, ...]] = {}
        for task, items in raw.items():
            if not isinstance(items, list) or not items:
                raise ValueError(f"{path}: task {task!r} needs a non-empty list of templates")
            for item in items:
                names = {f for _, f, _, _ in string.Formatter().parse(str(item)) if f}
                if unknown := names - FIELDS:
                    raise ValueError(
                        f"{path}: template {item!r} of {task!r} uses unknown fields "
                        f"{sorted(unknown)}; allowed: {sorted(FIELDS)}"
                    )
            templates[str(task)] = tuple(str(i) for i in items)
        return cls(templates, seed)

    def choose(self, task: str, sample_id: str, **fields: str) -> str:
        options = self.templates.get(task)
        if not options:
            raise KeyError(f"no prompt templates for task {task!r}; add them to the prompt file")
        digest = hashlib.sha256(f"{self.seed}:{task}:{sample_id}".encode()).digest()
        template = options[int.from_bytes(digest[:8], "little") % len(options)]
        return template.format(**{k: fields.get(k, "") for k in FIELDS})
