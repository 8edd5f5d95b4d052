"""Quality filters: which samples the shards step leaves out although their input is fine.

Owns: the `filters:` section of the shards config (`QualityFilters`) and the decision, per
sample, of which filters reject it. A filtered sample is not quarantined (its input is not
broken, it is just not good enough for training); it is counted per task and reason, with its
hours, in the stage's index.json, the step's summary and the stats report.

Must not: read audio (every measure it uses was taken at ingest or by `annotate`).
"""

from __future__ import annotations

from dataclasses import dataclass


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
