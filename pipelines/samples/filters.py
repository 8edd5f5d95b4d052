"""Quality filters: which samples the shards step leaves out although their input is fine.

Owns: the `filters:` section of the shards config (`QualityFilters`) and the decision, per
sample, of which filters reject it. A filtered sample is not quarantined (its input is not
broken, it is just not good enough for training); it is counted per task and reason, with its
hours, in the stage's index.json, the step's summary and the stats report.

Decisions: `recording_reason` (SNR, clipping, speech ratio of the recording row) and
`segment_reason` (those, then characters per second of the transcript, CER of the human
transcript against the model's, language against the model's); each returns the first reason
(`REASONS` order) or None. The CER is a plain Levenshtein distance over normalised characters
(no third-party dependency for a dozen lines).

Must not: read audio (every measure it uses was taken at ingest or by `annotate`), or count
(the builders count what a decision removed, in BuildCounts.filtered / filtered_s).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from pipelines.samples.sources import ModelLabels, RecordingInfo


@dataclass
class QualityFilters:
    """Each filter is off while None. Recording-level measures (SNR, clipping, speech ratio)
    come from the `recordings` table; the model comparisons need an `annotate` run."""

    min_snr_db: float | None = None
    """Leave out audio whose recording's SNR (dB) is below this (unknown SNR passes)."""
    max_clipping_ratio: float | None = None
    """Leave out audio whose recording clips on more than this fraction of samples."""
    min_speech_ratio: float | None = None
    """Leave out audio whose recording is speech for less than this fraction of its time."""
    chars_per_second: list[float] | None = None
    """[low, high]: leave out transcribed samples whose characters per second of audio fall
    outside (too few: a truncated transcript; too many: a misaligned one)."""
    max_cer_vs_model: float | None = None
    """Leave out a human transcript whose character error rate against the model's pseudo
    transcript is above this: how corpus builders catch misaligned transcripts."""
    language_must_match_model: bool = False
    """Leave out a segment whose human language label differs from the model's."""

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> QualityFilters:
        """The `filters:` section -> QualityFilters; an unknown name or a malformed range is a
        ValueError that names it (a typo must not silently filter nothing)."""
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(section) - known):
            raise ValueError(f"filters: unknown {unknown}; known: {sorted(known)}")
        out = cls(**dict(section))
        cps = out.chars_per_second
        if cps is not None and (
            not isinstance(cps, (list, tuple)) or len(cps) != 2 or not cps[0] <= cps[1]
        ):
            raise ValueError(f"filters.chars_per_second: {cps!r} is not [low, high]")
        return out

    @property
    def needs_model(self) -> bool:
        """Whether a decision reads the `annotations` table."""
        return self.max_cer_vs_model is not None or self.language_must_match_model

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) not in (None, False) for f in fields(self))


NOISE_IS_THE_LABEL = frozenset({"audio_event"})
"""Stage-1 tasks whose label is the sound besides the speech: a mixed-in event lowers the
recording's SNR and speech ratio by design, so `min_snr_db` and `min_speech_ratio` do not apply
to their samples (`for_task`); clipping, transcript and model checks still do."""


def for_task(filters: QualityFilters, task: str) -> QualityFilters:
    """The filters that apply to `task`'s samples (NOISE_IS_THE_LABEL)."""
    if task in NOISE_IS_THE_LABEL:
        return replace(filters, min_snr_db=None, min_speech_ratio=None)
    return filters


REASONS = (
    "min_snr_db",
    "max_clipping_ratio",
    "min_speech_ratio",
    "chars_per_second",
    "max_cer_vs_model",
    "language_must_match_model",
)
"""Every reason a sample is filtered for, in the order they are checked: a sample that fails
several is counted once, under the first (so the hours removed per reason add up)."""


def recording_reason(filters: QualityFilters, rec: RecordingInfo) -> str | None:
    """The first recording-level filter the recording fails, else None. An unmeasured value
    (SNR is null without a pause; an older build) passes: no evidence is not bad evidence."""
    checks = (
        ("min_snr_db", filters.min_snr_db, rec.snr_db, lambda value, bound: value < bound),
        (
            "max_clipping_ratio",
            filters.max_clipping_ratio,
            rec.clipping_ratio,
            lambda value, bound: value > bound,
        ),
        (
            "min_speech_ratio",
            filters.min_speech_ratio,
            rec.speech_ratio,
            lambda value, bound: value < bound,
        ),
    )
    for reason, bound, value, fails in checks:
        if bound is not None and value is not None and fails(value, bound):
            return reason
    return None


def segment_reason(
    filters: QualityFilters,
    rec: RecordingInfo,
    *,
    duration_s: float,
    text: str | None,
    language: str | None,
    model: ModelLabels | None,
) -> str | None:
    """The first filter one segment fails (its recording's measures first), else None.

    `text` and `language` are the segment's human labels; the model comparisons pass where
    either side has no label. chars_per_second reads the human transcript, else the model's."""
    if reason := recording_reason(filters, rec):
        return reason
    transcript = text or (model.transcript if model else None)
    if filters.chars_per_second is not None and transcript and duration_s > 0:
        low, high = filters.chars_per_second
        if not low <= chars_per_second(transcript, duration_s) <= high:
            return "chars_per_second"
    pseudo_text = model.transcript if model else None
    if (
        filters.max_cer_vs_model is not None
        and text
        and pseudo_text
        and cer(text, pseudo_text) > filters.max_cer_vs_model
    ):
        return "max_cer_vs_model"
    pseudo_language = model.language if model else None
    if (
        filters.language_must_match_model
        and language
        and pseudo_language
        and base_language(language) != base_language(pseudo_language)
    ):
        return "language_must_match_model"
    return None


def chars_per_second(text: str, duration_s: float) -> float:
    """Characters per second, whitespace not counted (so that languages written without spaces
    compare with those written with them)."""
    return sum(not c.isspace() for c in text) / duration_s


def base_language(code: str) -> str:
    """`en-US` and `EN` -> `en`: a region or case difference is not a mismatch."""
    return code.replace("_", "-").split("-")[0].strip().lower()


def normalise_for_cer(text: str) -> str:
    """Case-folded, punctuation and symbols dropped, whitespace collapsed: a model writes
    `Hello, world.` where a corpus writes `HELLO WORLD`; that is no error."""
    kept = "".join(
        " " if unicodedata.category(c)[0] in "PSZ" else c
        for c in unicodedata.normalize("NFKC", text)
    )
    return " ".join(kept.casefold().split())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions cost 1), two-row dynamic
    programme: O(len(a) * len(b)) time, O(len(b)) memory; segment transcripts are short."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate of `hypothesis` against `reference` (both normalised): edits over
    the reference's characters, spaces included; against an empty reference, 0 for an empty
    hypothesis and 1 for any other (everything it says is wrong)."""
    ref, hyp = normalise_for_cer(reference), normalise_for_cer(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)
