"""Read a recording back from its source the way ingest saw it: decoded, folded, at 16 kHz.

Shared by the steps that need audio again after ingest (diarize, synthesize's voice prompts, the
shard step); ingest's own decode stage keeps its measurements and quarantine logic.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def load_audio_16k(source_uri: str, channels: int, storage_options: dict[str, Any]) -> np.ndarray:
    """The recording as ingest saw it: decoded, dual mono folded, (channels, samples) at 16 kHz."""
    from minmo.audio.decode import container_of, decode_audio
    from minmo.audio.measure import fold_dual_mono
    from minmo.audio.resample import TARGET_RATE_HZ, resample
    from pipelines.ingest.decode_stage import read_source

    audio = decode_audio(read_source(source_uri, storage_options), container_of(source_uri))
    samples = fold_dual_mono(audio.samples)
    if channels == 1 and samples.shape[0] > 1:
        samples = samples.mean(axis=0, keepdims=True)
    return resample(samples, audio.sample_rate_hz, TARGET_RATE_HZ)
