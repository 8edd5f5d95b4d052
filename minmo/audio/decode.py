"""Turn the bytes of an audio file into float32 samples, in-process, for any common container.

Owns: choosing a decoder and reporting what the file was (container, rate, channels, bit depth).
Must not: resample, measure or judge the audio; callers decide what is acceptable.

Why two decoders: libsndfile (soundfile) is the fastest for wav/flac/ogg/mp3 and tells the PCM
bit depth; everything else (m4a/aac/webm/opus-in-mp4, ...) goes through torchcodec, which links
FFmpeg's libraries into this process. Spawning an `ffmpeg` process per file costs ~60-240 ms of
start-up per file, so it is never done.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import soundfile as sf

# libsndfile subtype -> bits per sample; lossy codecs have no bit depth.
_PCM_BITS = {
    "PCM_S8": 8,
    "PCM_U8": 8,
    "PCM_16": 16,
    "PCM_24": 24,
    "PCM_32": 32,
    "FLOAT": 32,
    "DOUBLE": 64,
    "ALAW": 8,
    "ULAW": 8,
}
_SOUNDFILE_CONTAINERS = {
    "wav",
    "wave",
    "flac",
    "ogg",
    "oga",
    "mp3",
    "aiff",
    "aif",
    "au",
    "w64",
    "sph",
    "nist",
}


# Error messages quote in-memory objects with their addresses; reruns must give equal details.
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


class DecodeError(Exception):
    """No decoder could make audio of these bytes."""


@dataclass
class DecodedAudio:
    """Decoded audio. `samples` is (channels, frames) float32 in [-1, 1] full scale."""

    samples: np.ndarray
    sample_rate_hz: int
    container: str
    bits: int | None

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate_hz if self.sample_rate_hz else 0.0


def container_of(uri: str) -> str:
    """The container named by a URI's extension (lower case, no dot), '' when there is none."""
    name = uri.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def decode_audio(data: bytes, container_hint: str = "") -> DecodedAudio:
    """Decode a whole file held in memory. Raises DecodeError with both decoders' reasons."""
    if not data:
        raise DecodeError("file is empty (0 bytes)")
    errors: list[str] = []
    decoders = (_decode_soundfile, _decode_torchcodec)
    if container_hint and container_hint not in _SOUNDFILE_CONTAINERS:
        decoders = (_decode_torchcodec, _decode_soundfile)
    for decoder in decoders:
        try:
            return decoder(data, container_hint)
        except DecodeError:
            raise
        except Exception as exc:  # each library raises its own types; we report them all
            message = _ADDRESS.sub("<in-memory file>", str(exc)).strip()
            errors.append(f"{decoder.__name__.removeprefix('_decode_')}: {message}")
    raise DecodeError("; ".join(errors))


def _decode_soundfile(data: bytes, container_hint: str) -> DecodedAudio:
    with sf.SoundFile(io.BytesIO(data)) as f:
        samples = f.read(dtype="float32", always_2d=True).T
        container = f.format.lower()
        if container == "wav" or container == "wavex":
            container = "wav"
        return DecodedAudio(
            samples=np.ascontiguousarray(samples),
            sample_rate_hz=int(f.samplerate),
            container=container_hint or container,
            bits=_PCM_BITS.get(f.subtype),
        )


def _decode_torchcodec(data: bytes, container_hint: str) -> DecodedAudio:
    from torchcodec.decoders import AudioDecoder  # lazy: pulls in FFmpeg's libraries

    decoder = AudioDecoder(data)
    decoded = decoder.get_all_samples()
    samples = decoded.data.numpy().astype(np.float32, copy=False)
    if samples.ndim == 1:
        samples = samples[None, :]
    return DecodedAudio(
        samples=np.ascontiguousarray(samples),
        sample_rate_hz=int(decoded.sample_rate),
        container=container_hint or "unknown",
        bits=None,
    )
