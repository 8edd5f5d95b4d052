"""Speech tokens: CosyVoice 2's S3 tokenizer v2 (s3tokenizer 0.3.0), 16 kHz audio -> 25 Hz codes.

Owns: loading the tokenizer from LOCAL weights, turning a batch of in-memory clips into int32 code
arrays, and long-clip windowing (a tiny random-init checkpoint for tests is
`minmo.testing.tiny_models.build_tiny_checkpoint`). Must not: download
(never `s3tokenizer.load_model`, which fetches from the network), decode files or resample
(callers bring float32 mono 16 kHz numpy arrays).

Data flow, per batch (B clips, samples_i each):

    clip (samples,) -> log-mel (128, F), F = samples // 160   (10 ms hop; stft's last frame dropped)
      -> windows of <= 3000 frames (30 s); clips over 30 s are cut like s3tokenizer's chunked path
      -> `padding` -> mels (W, 128, F_max), lens (W,) -> `model.quantize` (one forward for all W)
      -> codes per window, ceil(F_w / 4) each (two stride-2 convs) -> merged per clip -> int32

Exact token count (ceil of ceil is ceil, so no rounding subtleties):

    n_tokens = ceil((samples // 160) / 4)  ==  ceil(floor(samples / 160) / 4)

i.e. 25 per second, rounded UP per started 40 ms: 1 s -> 25, 2.5 s -> 63, 7.04 s -> 176,
35 s -> 875. `n_speech_tokens(samples)` computes it. Codes are in [0, SPEECH_VOCAB).

Clips over 30 s (> 3000 mel frames): windows of 3000 frames every 2600 frames (4 s overlap);
each window keeps its middle, dropping 50 tokens (2 s) on every overlapped side, as
`s3tokenizer.utils.merge_tokenized_segments` does. We window here instead of calling
`quantize` on the long mel because s3tokenizer 0.3.0's loop opens one window too many when the
previous window already reached the end (tail < 400 frames): its merge then silently loses up to
~100 tokens (e.g. 5300 frames -> 1275 tokens, not 1325). Our loop stops at the window that reaches
the end; wherever upstream is correct the codes are identical (tested).

Minimum clip: 400 samples (25 ms, one STFT window); shorter clips raise ValueError.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

HOP_SAMPLES = 160  # mel hop: 100 frames per second
FRAMES_PER_TOKEN = 4  # two stride-2 convolutions: 25 tokens per second
MIN_SAMPLES = 400  # one 25 ms STFT window
MODEL_NAME = "speech_tokenizer_v2_25hz"

# s3tokenizer 0.3.0's long-audio windowing (model_v2.py `_quantize_mixed_batch`), in mel frames.
WINDOW_FRAMES = 3000  # 30 s
OVERLAP_FRAMES = 400  # 4 s
STRIDE_FRAMES = WINDOW_FRAMES - OVERLAP_FRAMES  # 2600
OVERLAP_S = 4
TOKENS_PER_S = 25

RANDOM_INIT_SEED = 0


def n_speech_tokens(samples: int) -> int:
    """Tokens `SpeechTokenizer.tokenize` returns for a clip of `samples` 16 kHz samples."""
    return math.ceil((samples // HOP_SAMPLES) / FRAMES_PER_TOKEN)


def config_path_for(checkpoint: str | Path) -> Path:
    """Sidecar JSON holding the ModelConfig fields of a non-full-size checkpoint (`x.pt` -> `x.json`).

    `init_from_pt` loads a bare state_dict strictly into a model that must already have the right
    shape, so a checkpoint built with a small config carries that config beside it. No sidecar means
    the full-size CosyVoice 2 config (124 M params).
    """
    return Path(checkpoint).with_suffix(".json")


def model_config(overrides: dict | None = None):
    from s3tokenizer.model_v2 import ModelConfig

    # A fresh ModelConfig every time: S3TokenizerV2's default argument is one shared instance that
    # its __init__ mutates.
    config = ModelConfig()
    valid = {f.name for f in fields(config)}
    for key, value in (overrides or {}).items():
        if key not in valid:
            raise ValueError(
                f"unknown s3tokenizer ModelConfig field {key!r}; valid: {sorted(valid)}"
            )
        setattr(config, key, value)
    return config


class SpeechTokenizer:
    """S3 tokenizer v2 (CosyVoice 2, 25 Hz) as a stateful callable: load once, tokenize batches.

    checkpoint: path to a torch state_dict (`.pt`) loaded with `init_from_pt`; a sidecar
        `config_path_for(checkpoint)` JSON, if present, gives the ModelConfig fields (tiny test
        checkpoints). Real weights: convert the official ONNX once with
        `s3tokenizer.utils.onnx2torch(onnx_path, pt_path)`.
        None -> RANDOM WEIGHTS (seeded, full-size config). THE CODES THEN MEAN NOTHING: this is the
        demo's fallback when no weights are available, and `self.random_init` is True so that
        callers can refuse or label such output. Never ship a corpus built this way.
    device: "cuda" if available, else "cpu", unless given.
    """

    def __init__(self, checkpoint: str | Path | None, device: str | None = None) -> None:
        import torch
        from s3tokenizer.model_v2 import S3TokenizerV2

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.random_init = checkpoint is None
        if self.checkpoint is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model = S3TokenizerV2(MODEL_NAME, config=model_config())
        else:
            if not self.checkpoint.is_file():
                raise FileNotFoundError(
                    f"speech tokenizer checkpoint {self.checkpoint} not found; pass a local .pt "
                    "state_dict (see SpeechTokenizer docstring) or None for random weights"
                )
            sidecar = config_path_for(self.checkpoint)
            overrides = json.loads(sidecar.read_text()) if sidecar.is_file() else None
            model = S3TokenizerV2(MODEL_NAME, config=model_config(overrides))
            model.init_from_pt(str(self.checkpoint))
        self.model = model.to(self.device).eval()
        self.model.freeze()

    def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        return self.tokenize(batch)

    def tokenize(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        """float32 mono 16 kHz clips -> int32 codes, `n_speech_tokens(len(clip))` each, in [0, 6561)."""
        import torch
        from s3tokenizer.utils import log_mel_spectrogram, merge_tokenized_segments, padding

        if not batch:
            return []
        windows: list[torch.Tensor] = []
        owner: list[int] = []  # clip index of each window
        for i, clip in enumerate(batch):
            audio = _check_clip(clip, i)
            mel = log_mel_spectrogram(torch.from_numpy(audio), device=self.device)
            for start, end in _windows(mel.shape[1]):
                windows.append(mel[:, start:end])
                owner.append(i)

        mels, lens = padding(windows)
        with torch.inference_mode():
            # Every window is <= 3000 frames, so this is quantize's plain (non-chunked) path.
            codes, code_lens = self.model.quantize(mels.to(self.device), lens.to(self.device))
        codes = codes.cpu().numpy()
        code_lens = code_lens.cpu().numpy()

        per_clip: list[list[list[int]]] = [[] for _ in batch]
        for w, i in enumerate(owner):
            per_clip[i].append(codes[w, : code_lens[w]].tolist())
        out = []
        for segments in per_clip:
            merged = (
                segments[0]
                if len(segments) == 1
                else merge_tokenized_segments(segments, overlap=OVERLAP_S, token_rate=TOKENS_PER_S)
            )
            out.append(np.asarray(merged, dtype=np.int32))
        return out


def _check_clip(clip: np.ndarray, index: int) -> np.ndarray:
    audio = np.asarray(clip)
    if audio.ndim != 1:
        raise ValueError(f"clip {index}: expected mono (samples,), got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"clip {index}: expected float32 samples in [-1, 1], got {audio.dtype}")
    if audio.shape[0] < MIN_SAMPLES:
        raise ValueError(
            f"clip {index}: {audio.shape[0]} samples is shorter than {MIN_SAMPLES} (25 ms at 16 kHz)"
        )
    return np.ascontiguousarray(audio, dtype=np.float32)


def _windows(frames: int) -> list[tuple[int, int]]:
    """Mel-frame windows of one clip: one if <= 30 s, else 30 s every 26 s up to the end."""
    if frames <= WINDOW_FRAMES:
        return [(0, frames)]
    spans = []
    start = 0
    while True:
        end = min(start + WINDOW_FRAMES, frames)
        spans.append((start, end))
        if end == frames:
            # Stop here (upstream opens one more window, see module docstring). The last window
            # is then > 400 frames = 100 tokens, so dropping its first 50 is always safe.
            return spans
        start += STRIDE_FRAMES
