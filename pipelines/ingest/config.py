"""Configuration of the ingest step: one dataclass, every field documented and checked.

The `ingest:` section of a job spec maps onto `IngestConfig` one to one (see minmo/cli/jobs.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from minmo.config import ConfigError, StorageOptions, storage_options_field
from pipelines.ingest.sources import FORMATS
from schemas.labels import EMOTIONS


@dataclass
class IngestConfig:
    """How raw audio becomes the recordings / segments / quarantine tables."""

    format: str = "auto"
    """Source layout: auto, dir, jsonl, csv, parquet, kaldi, lhotse."""
    corpus: str | None = None
    """Corpus name for every recording; default: the manifest's column, else the source's name."""
    task: str | None = None
    """Task label (e.g. asr, conversation) for every recording, overriding the source's."""
    min_duration_s: float = 0.1
    """Shorter recordings are quarantined as too_short."""
    max_duration_s: float = 4 * 3600.0
    """Longer recordings are quarantined as too_long (a file is decoded whole in memory)."""
    min_sample_rate_hz: int = 8000
    """Sources stored below this rate are quarantined (unsupported_sample_rate)."""
    max_channels: int = 2
    """Sources with more channels (after folding dual mono) are quarantined."""
    max_channel_skew_s: float = 0.1
    """A recording stored one file per channel (a Lhotse multi-source recording, a manifest row
    whose `path` is a list) is quarantined as channel_length_mismatch when its files' durations
    differ by more than this (or their sample rates differ); within it, shorter files are padded
    with silence to the longest and noted as channels_padded (the recording is kept)."""
    max_segment_s: float = 30.0
    """VAD segments are cut to at most this long (MinMo's encoder window)."""
    merge_gap_s: float = 0.5
    """Neighbouring VAD speech regions closer than this are merged (within max_segment_s)."""
    vad_threshold: float = 0.5
    """silero-vad speech probability threshold."""
    min_speech_s: float = 0.25
    """VAD speech regions shorter than this are ignored."""
    min_silence_s: float = 0.1
    """A pause must last this long before VAD ends a speech region."""
    speech_pad_s: float = 0.03
    """Padding added to both sides of each VAD speech region."""
    max_chars_per_s: float = 40.0
    """A transcript denser than this (characters per second of audio) is text_audio_mismatch."""
    files_per_unit: int = 256
    """Files per committed unit of work: the granularity of resume."""
    units_per_wave: int = 64
    """Units in flight at once: the driver holds the listing entries of at most this many
    units (prepared, not yet committed) while one worker pool serves the whole run."""
    files_per_task: int = 64
    """Files per worker call: the granule of load balancing. Each call costs a Ray round trip
    and three staged Parquet writes (a few ms), noise beside the seconds its audio takes."""
    vad_batch_size: int = 64
    """Recordings per VAD call inside a worker: all their channels are scored as one batch, and
    wider batches step silero's LSTM over more streams at once (~1.4x faster at 64 than at 16)."""
    vad_batch_audio_s: float = 1800.0
    """A VAD call also starts once this much audio is decoded, which bounds a worker's memory
    (16 kHz float32: 64 kB per second of audio) whatever the file lengths."""
    vad_actors: int | None = None
    """Size of the ingest worker pool (one CPU each; each worker decodes, resamples, measures
    and runs the VAD in one process, so PCM never crosses the object store). Default: every
    CPU of the Ray cluster."""
    emotion_map: dict[str, str] = field(default_factory=dict)
    """The corpus' own emotion codes: {value: vocabulary word}, e.g. {"joy+": happy, "7": sad}.
    Keys match case-insensitively and are consulted before the built-in mappings
    (schemas/labels.py: RAVDESS / CREMA-D / IEMOCAP / ESD / MELD); each word must be one of
    neutral, calm, happy, sad, angry, fearful, disgusted, surprised, excited, frustrated, other.
    A value neither maps is quarantined as bad_label and the recording kept without it."""
    storage_options: StorageOptions = storage_options_field()

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"ingest.format={self.format!r}: choose one of {', '.join(FORMATS)}")
        positive = (
            "min_duration_s",
            "max_duration_s",
            "max_segment_s",
            "files_per_unit",
            "units_per_wave",
            "files_per_task",
            "vad_batch_size",
            "vad_batch_audio_s",
            "max_channels",
            "max_chars_per_s",
            "min_sample_rate_hz",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"ingest.{name} must be > 0, got {getattr(self, name)}")
        if self.vad_actors is not None and self.vad_actors <= 0:
            raise ConfigError(f"ingest.vad_actors must be > 0 or null, got {self.vad_actors}")
        if self.max_channel_skew_s < 0:
            raise ConfigError(
                f"ingest.max_channel_skew_s must be >= 0, got {self.max_channel_skew_s}"
            )
        if self.min_duration_s >= self.max_duration_s:
            raise ConfigError("ingest.min_duration_s must be below ingest.max_duration_s")
        if not 0.0 < self.vad_threshold < 1.0:
            raise ConfigError(f"ingest.vad_threshold must be in (0, 1), got {self.vad_threshold}")
        self.emotion_map = _emotion_map(self.emotion_map)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _emotion_map(given: Any) -> dict[str, str]:
    """`emotion_map` with lower-cased, stripped keys (schemas.labels.parse_emotion looks values
    up that way), every word checked against the vocabulary."""
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise ConfigError(f"ingest.emotion_map must map values to words, got {given!r}")
    out: dict[str, str] = {}
    for value, word in given.items():
        if word not in EMOTIONS:
            raise ConfigError(
                f"ingest.emotion_map[{value!r}] = {word!r}: choose one of {', '.join(EMOTIONS)}"
            )
        out[str(value).strip().lower()] = word
    return out
