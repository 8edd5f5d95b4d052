"""The `channels` backend: one speaker per channel, as in telephone corpora (Fisher, call centres).

Owns: turning per-channel speech activity into speaker segments, including the removal of
crosstalk, i.e. one party's voice leaking quietly into the other party's channel (a shared
handset mix, acoustic echo, a hybrid). Must not: decode, resample (callers bring 16 kHz float32
(channels, samples)), read files, or guess speakers inside a channel (that is a mono backend's job).

Data flow, per recording (C channels, T windows of 512 samples = 32 ms):

    audio (C, samples) -> silero speech probabilities (C, T), all channels in one call
      -> levels (C, T) dB: frame powers, smoothed over ~160 ms
      -> leakage mask (C, T): a window is crosstalk on c when another channel is talking in it and
         c is both >= `leakage_margin_db` quieter than that channel and no louder than the
         measured coupling between them would make it (see `_leakage_mask`)
      -> probabilities with crosstalk windows zeroed -> silero's stock post-processing per channel
      -> SpeakerSegment(f"ch{c}", channel=c, ...), same-channel gaps < `merge_gap_s` joined.

Overlap between channels is kept: both parties' segments are returned.

Confidence of a segment = mean silero speech probability over the 32 ms windows it covers
(before crosstalk masking; merged segments take the duration-weighted mean of their parts).
It says how speech-like the channel sounded, not how sure we are of the speaker: on this
layout the speaker is given by the channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from minmo.audio.measure import frame_powers
from minmo.audio.vad import (
    FRAME_SAMPLES,
    BatchedSileroVad,
    level_normalized,
    speech_timestamps,
)
from minmo.config import ConfigError
from minmo.diarization.types import (
    DiarizationRejected,
    SpeakerHints,
    SpeakerSegment,
    merge_close,
)
from schemas.quarantine import ReasonCode
from schemas.units import SAMPLE_RATE_HZ

# Powers below this (-100 dBFS) are digital silence; flooring keeps dB differences finite.
_POWER_FLOOR = 1e-10
# The coupling between two channels is only measured from at least this many candidate
# crosstalk windows (~1 s); with fewer, the margin alone decides.
_MIN_COUPLING_WINDOWS = 32


@dataclass(frozen=True)
class ChannelDiarizerConfig:
    """Settings of `ChannelDiarizer`. Defaults were checked on the demo conversations (DER <= 3 %)
    and a real 8 kHz call; see tests/diarization/test_channels.py."""

    threshold: float = 0.5
    """Silero speech probability that starts speech (stock default; ends below threshold - 0.15)."""
    min_speech_s: float = 0.2
    """Shorter speech regions are dropped: clicks, breaths. Below silero's stock 0.25 s because
    one-syllable back-channels ("mm", "嗯", ~0.2 s) are turn-taking events a duplex corpus needs
    (stock drops the demo's 0.19 s "嗯"); on the real call this added one 0.28 s region."""
    min_silence_s: float = 0.1
    """A region ends only after this much silence (stock default)."""
    speech_pad_s: float = 0.03
    """Each region is widened by this much on both sides (stock default)."""
    leakage_margin_db: float = 15.0
    """Speech on c is crosstalk only if c is at least this much quieter than a talking channel in
    the same windows. Two parties talking at once on their own channels differ by a few dB (the
    demo's overlaps, smoothed levels: median 3.7 dB, 90th percentile 12 dB; the tail is word
    onsets and endings, which the coupling bound below keeps), while handset or echo leakage
    is typically 20-40 dB down."""
    leakage_excess_db: float = 10.0
    """...and only if c is not this much louder than the measured coupling would make it: a quiet
    back-channel over a loud partner is kept when the channels barely leak into each other."""
    leakage_smooth_s: float = 0.16
    """Frame powers are averaged over this span before comparing channels, so a crosstalk copy
    delayed by a few tens of ms (echo) and per-phoneme level swings compare like with like."""
    merge_gap_s: float = 0.5
    """Same-channel regions closer than this are one segment. VAD splits a sentence at every
    comma-length pause (0.2-0.4 s in speech), while references and turn-taking count a turn as
    one stretch; 0.5 s stays below the typical gap between two turns of a conversation (the
    MinMo paper's turn gap is ~0.6 s mean), so a speaker's separate turns mostly stay apart."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        for name in ("min_speech_s", "min_silence_s", "speech_pad_s", "merge_gap_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 seconds, got {getattr(self, name)}")
        if self.leakage_margin_db <= 0:
            raise ConfigError(
                f"leakage_margin_db must be > 0 dB (15 is typical), got {self.leakage_margin_db}"
            )
        if self.leakage_excess_db < 0:
            raise ConfigError(f"leakage_excess_db must be >= 0 dB, got {self.leakage_excess_db}")
        if self.leakage_smooth_s < 0:
            raise ConfigError(f"leakage_smooth_s must be >= 0 seconds, got {self.leakage_smooth_s}")


class ChannelDiarizer:
    """One speaker per channel: channel c is speaker f"ch{c}". Loads silero-vad once.

    `hints` are accepted for the common backend signature but not used: on this layout the
    channels fix the speakers, and a channel that stays silent (e.g. a muted third line) simply
    yields no segments.
    """

    def __init__(
        self, config: ChannelDiarizerConfig | None = None, *, vad: BatchedSileroVad | None = None
    ) -> None:
        """vad: share one already loaded `BatchedSileroVad` between stages (loading takes ~1 s)."""
        self.config = config or ChannelDiarizerConfig()
        self.vad = vad or BatchedSileroVad()

    def __call__(self, audio: np.ndarray, hints: SpeakerHints) -> list[SpeakerSegment]:
        """audio: float32 (channels, samples) at 16 kHz. Segments sorted by (start, speaker).

        Raises DiarizationRejected: not_multichannel (fewer than 2 channels), no_speech (no
        channel has speech), single_speaker (only one channel has speech once crosstalk is
        removed).
        """
        if audio.ndim != 2 or audio.shape[0] < 2:
            channels = audio.shape[0] if audio.ndim == 2 else 1
            raise DiarizationRejected(
                ReasonCode.NOT_MULTICHANNEL.value,
                f"per-channel diarization needs >= 2 channels, got {channels} "
                f"(audio shape {audio.shape}); use a mono backend",
            )
        cfg = self.config
        num_samples = audio.shape[1]
        # one gain for all channels: crosstalk stays as far below speech as recorded
        probs = np.stack(self.vad.speech_probs(level_normalized(list(audio))))  # (C, T)
        if not (probs >= cfg.threshold).any():
            raise DiarizationRejected(
                ReasonCode.NO_SPEECH.value,
                f"no channel of {audio.shape[0]} reaches speech probability {cfg.threshold}",
            )
        levels = _levels_db(audio, probs.shape[1], cfg.leakage_smooth_s)
        leak = _leakage_mask(levels, probs >= cfg.threshold, cfg)
        segments: list[SpeakerSegment] = []
        for c in range(audio.shape[0]):
            masked = np.where(leak[c], 0.0, probs[c]).astype(np.float32)
            for start_s, end_s in speech_timestamps(
                masked,
                num_samples,
                threshold=cfg.threshold,
                min_speech_duration_ms=round(cfg.min_speech_s * 1000),
                min_silence_duration_ms=round(cfg.min_silence_s * 1000),
                speech_pad_ms=round(cfg.speech_pad_s * 1000),
                time_resolution=3,
            ):
                segments.append(
                    SpeakerSegment(
                        f"ch{c}", c, start_s, end_s, _mean_prob(probs[c], start_s, end_s)
                    )
                )
        speakers = sorted({s.speaker for s in segments})
        if not speakers:
            raise DiarizationRejected(
                ReasonCode.NO_SPEECH.value,
                "speech-like windows exist but none forms a region of "
                f">= {cfg.min_speech_s} s once crosstalk is removed",
            )
        if len(speakers) == 1:
            raise DiarizationRejected(
                ReasonCode.SINGLE_SPEAKER.value,
                f"only {speakers[0]} of {audio.shape[0]} channels has speech once crosstalk "
                f"({cfg.leakage_margin_db:g} dB or more below another channel) is removed",
            )
        return merge_close(segments, cfg.merge_gap_s)


def _levels_db(audio: np.ndarray, num_windows: int, smooth_s: float) -> np.ndarray:
    """(C, samples) -> (C, T) power in dBFS per VAD window, moving-averaged over `smooth_s`."""
    width = max(1, round(smooth_s * SAMPLE_RATE_HZ / FRAME_SAMPLES))
    kernel = np.ones(width) / width
    levels = np.empty((audio.shape[0], num_windows))
    for c, channel in enumerate(audio):
        powers = frame_powers(channel, FRAME_SAMPLES)[:num_windows]
        # mode="same" centres the window; edges average in zeros, i.e. read a little quieter.
        smoothed = np.convolve(powers, kernel, mode="same")
        levels[c] = 10.0 * np.log10(np.maximum(smoothed, _POWER_FLOOR))
    return levels


def _leakage_mask(levels: np.ndarray, active: np.ndarray, cfg: ChannelDiarizerConfig) -> np.ndarray:
    """(C, T) True where channel c's sound in a window is crosstalk from another channel.

    relative[c] = c's level minus the loudest other channel that the VAD calls speech in the
    same window (+inf where no other channel talks: nothing to leak from). A window is crosstalk
    when relative <= min(-margin, coupling + excess), where coupling is the median relative
    level over the windows that pass the margin alone: what c sounds like when it only carries
    the other party (their leakage, or c's noise floor where nothing leaks). The second bound
    keeps c's own quiet speech over a loud partner when the measured leakage is far lower.
    """
    num_channels = levels.shape[0]
    mask = np.zeros(levels.shape, dtype=bool)
    for c in range(num_channels):
        others = [o for o in range(num_channels) if o != c]
        loudest_talking = np.max(np.where(active[others], levels[others], -np.inf), axis=0)
        relative = levels[c] - loudest_talking  # +inf where no other channel talks
        candidates = relative <= -cfg.leakage_margin_db
        cut = -cfg.leakage_margin_db
        if np.count_nonzero(candidates) >= _MIN_COUPLING_WINDOWS:
            coupling = float(np.median(relative[candidates]))
            cut = min(cut, coupling + cfg.leakage_excess_db)
        mask[c] = relative <= cut
    return mask


def _mean_prob(probs: np.ndarray, start_s: float, end_s: float) -> float:
    """Mean speech probability over the 32 ms windows that [start_s, end_s) touches."""
    first = int(start_s * SAMPLE_RATE_HZ) // FRAME_SAMPLES
    last = max(first + 1, math.ceil(end_s * SAMPLE_RATE_HZ / FRAME_SAMPLES))
    return float(np.mean(probs[first:last]))
