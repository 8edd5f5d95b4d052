"""espeak-ng as a `TtsBackend`: formant synthesis on CPU, deterministic, every language it ships.

Owns: turning a `TtsRequest` into one `espeak-ng --stdout` call (voice, rate, pitch, amplitude)
and the WAV that comes back into float32 mono at espeak's native 22050 Hz. Must not: resample,
trim or place audio (callers do), or raise for one bad request (it becomes a `TtsFailure`).

Style mapping (multipliers of the backend defaults; an emotion preset and an explicit rate or
pitch multiply together; results are clamped to what espeak-ng accepts):

    field / emotion   words per minute (-s)  pitch 0-99 (-p)   amplitude 0-200 (-a)
    (defaults)        default_rate_wpm=165   default_pitch=50  default_amplitude=100
    speaking_rate=r   x r                    -                 -
    pitch=p           -                      x p               -
    happy             x 1.10                 x 1.25            x 1.05
    excited           x 1.25                 x 1.35            x 1.15
    sad               x 0.80                 x 0.75            x 0.70
    angry             x 1.15                 x 1.05            x 1.40
    calm              x 0.85                 x 0.95            x 0.90
    neutral / other   x 1                    x 1               x 1

Voice: `Voice.engine_voice` (e.g. "en-us+m3"), else `Voice.language`. `Style.dialect` replaces the
base voice when espeak-ng ships a voice for it *and* it is the same language as the base voice
(an "en-gb" dialect turns "en-us+f2" into "en-gb+f2"; "es-mx" resolves to espeak's "es-419"); the
"+variant" is kept. A dialect espeak does not know leaves the voice unchanged and is counted in
`dialect_misses`. An unknown emotion is spoken neutrally and counted in `emotion_misses`.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from minmo.tts.base import Style, Synthesized, TtsFailure, TtsRequest, Voice

TTS_FAILED = "tts_failed"  # schemas.quarantine.ReasonCode.TTS_FAILED
NATIVE_RATE_HZ = 22050
MIN_WPM, MAX_WPM = 80, 450  # espeak-ng's accepted -s range
MAX_PITCH = 99
MAX_AMPLITUDE = 200
INSTALL_HINT = "install it: apt-get install espeak-ng"


@dataclass(frozen=True)
class Prosody:
    """Multipliers of the backend defaults for one emotion."""

    rate: float = 1.0
    pitch: float = 1.0
    amplitude: float = 1.0


EMOTION_PRESETS: dict[str, Prosody] = {
    "neutral": Prosody(),
    "happy": Prosody(rate=1.10, pitch=1.25, amplitude=1.05),
    "excited": Prosody(rate=1.25, pitch=1.35, amplitude=1.15),
    "sad": Prosody(rate=0.80, pitch=0.75, amplitude=0.70),
    "angry": Prosody(rate=1.15, pitch=1.05, amplitude=1.40),
    "calm": Prosody(rate=0.85, pitch=0.95, amplitude=0.90),
}


@dataclass(frozen=True)
class EspeakArgs:
    """One espeak-ng invocation, resolved from a request: what `-v -s -p -a` receive."""

    voice: str
    rate_wpm: int
    pitch: int
    amplitude: int | None = None  # None: no -a, espeak-ng's own default (the demo corpus)


class EspeakBackend:
    """Callable-once-per-actor espeak-ng backend.

    workers: espeak-ng runs as a subprocess, so a batch is spoken on this many threads at once
    (one per CPU you give the actor). timeout_s: per call; a hung espeak becomes a failure.
    """

    name = "espeak"

    def __init__(
        self,
        default_rate_wpm: int = 165,
        default_pitch: int = 50,
        default_amplitude: int = 100,
        workers: int = 1,
        timeout_s: float = 60.0,
        exe: str | None = None,
    ) -> None:
        if not MIN_WPM <= default_rate_wpm <= MAX_WPM:
            raise ValueError(f"default_rate_wpm={default_rate_wpm}: use {MIN_WPM}..{MAX_WPM}")
        if not 0 <= default_pitch <= MAX_PITCH:
            raise ValueError(f"default_pitch={default_pitch}: use 0..{MAX_PITCH}")
        if not 0 <= default_amplitude <= MAX_AMPLITUDE:
            raise ValueError(f"default_amplitude={default_amplitude}: use 0..{MAX_AMPLITUDE}")
        self.default_rate_wpm = default_rate_wpm
        self.default_pitch = default_pitch
        self.default_amplitude = default_amplitude
        self.workers = max(1, workers)
        self.timeout_s = timeout_s
        self.exe = exe or shutil.which("espeak-ng")
        self._voices: dict[str, str] | None = None  # lower-case tag -> espeak voice name
        self._lock = threading.Lock()
        self.dialect_misses = 0
        self.emotion_misses = 0

    # -- mapping -----------------------------------------------------------------------------

    def resolve(self, voice: Voice, style: Style) -> EspeakArgs:
        """The espeak-ng arguments for one request (pure apart from the cached voice list)."""
        engine_voice = voice.engine_voice or voice.language
        base, plus, variant = engine_voice.partition("+")
        if style.dialect:
            chosen = self._dialect_voice(style.dialect, base)
            if chosen is None:
                with self._lock:
                    self.dialect_misses += 1
            else:
                base = chosen
        preset = EMOTION_PRESETS.get((style.emotion or "neutral").strip().lower())
        if preset is None:
            preset = EMOTION_PRESETS["neutral"]
            with self._lock:
                self.emotion_misses += 1
        rate = self.default_rate_wpm * preset.rate * (style.speaking_rate or 1.0)
        pitch = self.default_pitch * preset.pitch * (style.pitch or 1.0)
        amplitude = self.default_amplitude * preset.amplitude
        return EspeakArgs(
            voice=base + plus + variant,
            rate_wpm=int(np.clip(round(rate), MIN_WPM, MAX_WPM)),
            pitch=int(np.clip(round(pitch), 0, MAX_PITCH)),
            amplitude=int(np.clip(round(amplitude), 0, MAX_AMPLITUDE)),
        )

    def _dialect_voice(self, dialect: str, base: str) -> str | None:
        tag = dialect.strip().lower().replace("_", "-")
        chosen = self.known_voices().get(tag)
        if chosen is None or _primary(chosen) != _primary(base):
            return None
        return chosen

    def known_voices(self) -> dict[str, str]:
        """Language tags (and their listed aliases, e.g. es-mx) -> espeak voice, from
        `espeak-ng --voices`; empty when espeak-ng is missing."""
        if self._voices is None:
            voices: dict[str, str] = {}
            if self.exe is not None:
                proc = subprocess.run(
                    [self.exe, "--voices"], capture_output=True, check=False, timeout=30
                )
                voices = parse_voice_list(proc.stdout.decode("utf-8", "replace"))
            self._voices = voices
        return self._voices

    # -- synthesis ---------------------------------------------------------------------------

    def synthesize(self, requests: Sequence[TtsRequest]) -> list[Synthesized | TtsFailure]:
        if self.workers == 1 or len(requests) <= 1:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(self._one, requests))

    def _one(self, request: TtsRequest) -> Synthesized | TtsFailure:
        if not request.text.strip():
            return TtsFailure(TTS_FAILED, f"{request.key}: empty text")
        if self.exe is None:
            return TtsFailure(TTS_FAILED, f"espeak-ng was not found on PATH; {INSTALL_HINT}")
        args = self.resolve(request.voice, request.style)
        try:
            proc = run_espeak(self.exe, args, request.text, self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return TtsFailure(TTS_FAILED, f"{request.key}: espeak-ng {args}: {exc}")
        err = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode != 0:
            return TtsFailure(
                TTS_FAILED, f"{request.key}: espeak-ng {args} exited {proc.returncode}: {err}"
            )
        try:
            samples, rate = decode_piped_wav(proc.stdout)
        except ValueError as exc:
            return TtsFailure(TTS_FAILED, f"{request.key}: espeak-ng {args}: {exc}; {err}")
        if len(samples) == 0 or not np.any(samples):
            return TtsFailure(TTS_FAILED, f"{request.key}: espeak-ng {args} produced no audio")
        return Synthesized(samples=samples, sample_rate_hz=rate)


def run_espeak(
    exe: str, args: EspeakArgs, text: str, timeout_s: float | None = None
) -> subprocess.CompletedProcess[bytes]:
    """One `espeak-ng --stdout` call; the WAV is in `.stdout` (decode it with
    `decode_piped_wav`). The one espeak-ng command line: this backend and the demo corpus
    builder (`minmo.demo.speak`) both speak through it.

    Text goes through stdin as UTF-8 (-b 1): neither the locale nor a leading dash in the text
    can change what is spoken, and no shell is involved.
    """
    cmd = [exe, "-v", args.voice, "-s", str(args.rate_wpm), "-p", str(args.pitch)]
    if args.amplitude is not None:
        cmd += ["-a", str(args.amplitude)]
    cmd += ["-b", "1", "--stdin", "--stdout"]
    return subprocess.run(
        cmd, input=text.encode("utf-8"), capture_output=True, check=False, timeout=timeout_s
    )


def _primary(tag: str) -> str:
    return tag.split("-", 1)[0].lower()


def parse_voice_list(listing: str) -> dict[str, str]:
    """Parse `espeak-ng --voices`: language column, plus "(alias priority)" other languages.

    A language's own voice wins over an alias that points elsewhere (es-mx -> es-419 only if
    no voice is itself called es-mx).
    """
    own: dict[str, str] = {}
    aliases: dict[str, tuple[int, str]] = {}  # alias -> (priority, voice); lower wins
    for line in listing.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 5 or cols[1] == "variant":
            continue
        language = cols[1]
        own.setdefault(language.lower(), language)
        tokens = " ".join(cols[5:]).replace("(", " ").replace(")", " ").split()
        for alias, priority in zip(tokens[::2], tokens[1::2], strict=False):
            rank = int(priority) if priority.isdigit() else 99
            if rank < aliases.get(alias.lower(), (100, ""))[0]:
                aliases[alias.lower()] = (rank, language)
    return {**{a: v for a, (_, v) in aliases.items()}, **own}


def decode_piped_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a WAV written to a pipe into float32 mono.

    A writer that cannot seek leaves placeholder RIFF/data sizes (espeak-ng writes 0x7ffff000);
    they are patched to the bytes actually received so the reader does not wait for samples
    that never came. The demo corpus builder decodes through this too.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("output is not a RIFF/WAVE stream")
    patched = bytearray(data)
    struct.pack_into("<I", patched, 4, len(data) - 8)
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        if chunk_id == b"data":
            real = len(data) - (pos + 8)
            real -= real % 2  # whole 16-bit samples only
            struct.pack_into("<I", patched, pos + 4, real)
            break
        pos += 8 + size + (size % 2)
    else:
        raise ValueError("WAV stream has no data chunk")
    audio, rate = sf.read(io.BytesIO(bytes(patched)), dtype="float32", always_2d=False)
    if audio.ndim != 1:
        audio = audio.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(audio, dtype=np.float32), int(rate)
