"""Held-out splits: which samples of a stage go to `train`, `valid` and `test`.

Owns: the `splits:` section of the shards config (`SplitConfig`) and the split of each sample.
A sample's split is a function of its speaker (or recording) alone, so that no speaker is in two
splits and a split never changes when data is added to the build: the split key is hashed with a
fixed salt (never the build's seed) into [0, 1) and compared to the fractions.

Must not: read tables or audio, or depend on anything but one sample's own meta and the config.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from minmo.config import ConfigError

# What a split is keyed on (`SplitConfig.by`).
SPLIT_BY = ("speaker", "recording")
# Fixed for ever: changing it would move every sample between splits. Not the shards seed, so
# that a new seed reshuffles shards without leaking a held-out speaker into train.
SPLIT_SALT = "minmo-split-v1"


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

    def __post_init__(self) -> None:
        for name in ("valid", "test"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"splits.{name} must be a fraction in [0, 1), got {value!r}")
        if self.valid + self.test >= 1.0:
            raise ConfigError("splits: valid + test must leave something for train (< 1)")
        if self.by not in SPLIT_BY:
            raise ConfigError(f"splits.by must be one of {', '.join(SPLIT_BY)}, got {self.by!r}")

    @property
    def enabled(self) -> bool:
        """Whether the stage is written as train/valid/test directories."""
        return self.valid > 0 or self.test > 0


def split_fraction(key: str) -> float:
    """A split key -> a fixed point in [0, 1): the same on every machine, run and build."""
    digest = hashlib.sha256(f"{SPLIT_SALT}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def split_key(meta: dict[str, Any], by: str, sample_key: str = "") -> str:
    """What a sample's split is keyed on: its speaker (by speaker, when labelled), else its
    recording (`recording_id`, else `source_key`), else its own key. Prefixed by kind, so that a
    speaker and a recording that share a name are not one key."""
    if by == "speaker" and meta.get("speaker"):
        return f"speaker:{meta['speaker']}"
    recording = meta.get("recording_id") or meta.get("source_key")
    if recording:
        return f"recording:{recording}"
    return f"sample:{sample_key}"


def split_of(meta: dict[str, Any], config: SplitConfig, sample_key: str = "") -> str:
    """The split of a sample with this meta; "" when the config splits nothing (one set).

    test takes [0, test), valid [test, test + valid), train the rest: growing one fraction
    moves keys only into the split that grew."""
    if not config.enabled:
        return ""
    point = split_fraction(split_key(meta, config.by, sample_key))
    if point < config.test:
        return "test"
    if point < config.test + config.valid:
        return "valid"
    return "train"
