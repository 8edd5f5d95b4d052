"""Held-out splits: which samples of a stage go to `train`, `valid` and `test`.

Owns: the `splits:` section of the shards config (`SplitConfig`) and the split of each sample.
A sample's split is a function of its speaker (or recording) alone, so that no speaker is in two
splits and a split never changes when data is added to the build.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "valid", "test")


@dataclass
class SplitConfig:
    """Fractions of speakers (or recordings) held out; the rest is `train`. With no fraction
    set, a stage is written as one unsplit set (`DIR/shards/<stage>/`)."""

    valid: float = 0.0
    """Fraction held out for validation."""
    test: float = 0.0
    """Fraction held out for test."""
    by: str = "speaker"
    """`speaker` (a sample without a speaker label goes by its recording) or `recording`."""
