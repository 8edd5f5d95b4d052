"""Batched silero-vad for 16 kHz mono audio: speech probabilities and speech regions.

Owns two things:

* `BatchedSileroVad.speech_probs`: silero-vad 6.x speech probabilities, one per 512-sample window,
  for many streams per call, equal to what stock `silero_vad.get_speech_timestamps` computes
  (within 1e-4: only float summation order differs).
* `speech_timestamps`: the stock post-processing (thresholds with hysteresis, minimum durations,
  max-duration splitting, padding, rounding to seconds) applied to those probabilities.
* `level_normalized`: the gain every caller applies before scoring, so that one threshold holds
  from loud close-talk audio to quiet far-field audio (see `vad_gain`).

Must not: decode, resample (callers bring 16 kHz), read files, or pick thresholds for a corpus.

Why it exists: stock `get_speech_timestamps` calls the TorchScript model once per 32 ms window of
one stream (about 94 audio-hours per core-hour), slower than every other ingest stage. The 16 kHz
network is feed-forward except for one LSTM cell, so here everything else runs on thousands of
windows at once as plain matrix products, and only the LSTM steps through time, for many streams
together, as an `nn.LSTM` carrying the cell's weights.

The 16 kHz network inside `load_silero_vad()._model`, per window, as replicated here:

    576 samples (64 of context = the previous window's tail, zeros at the start; 512 new, the
    last window zero-padded) -> reflect-pad 64 on the right -> |STFT| (periodic Hann 256, hop 128:
    4 steps x 129 bins) -> 4 x [conv1d k=3 pad=1, strides 1,2,2,1, -> ReLU] -> 128 features
    -> LSTMCell(128, 128) -> ReLU -> 1x1 conv -> sigmoid.

Dimension legend: N windows, S streams side by side, T windows of one stream, W STFT steps per
window (4), F frequency bins (129), C channels.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

from minmo.audio.measure import frame_powers
from schemas.units import SAMPLE_RATE_HZ

FRAME_SAMPLES = 512  # one probability per 512 samples at 16 kHz (32 ms)
CONTEXT_SAMPLES = 64  # tail of the previous window the model sees again
_MODEL_INPUT = CONTEXT_SAMPLES + FRAME_SAMPLES
_REFLECT_PAD = 64
_FFT_SIZE = 256
_FFT_HOP = 128
_ENCODER_STRIDES = (1, 2, 2, 1)
_HIDDEN = 128
_ENCODE_CHUNK = 256  # windows per encoder call: intermediates stay in L2/L3 cache
# Level normalisation before VAD (`vad_gain`).
VAD_LEVEL_DBFS = -20.0
"""Level the loud frames of a recording are brought to before VAD: close-talk speech's own."""
_LEVEL_PERCENTILE = 97.0  # the "loud frames": speech peaks even when speech is 5 % of a file
_MAX_VAD_GAIN_DB = 40.0  # never lift a recording by more (-60 dBFS speech is the limit)
_SILENT_DBFS = -90.0  # below this the loud frames are dither or digital silence: no gain
# Stock get_speech_timestamps defaults that our signature does not expose.
_MIN_SILENCE_AT_MAX_SPEECH_MS = 98
_DEFAULT_NEG_THRESHOLD_GAP = 0.15


def num_windows(num_samples: int) -> int:
    """Probabilities stock produces for `num_samples` samples: one per started 512-sample window."""
    return math.ceil(num_samples / FRAME_SAMPLES)


@dataclass(frozen=True)
class _Conv:
    """A k=3, pad=1 conv1d + ReLU, stored for channels-last matrix products."""

    weight: Tensor  # (C_in * 3, C_out): row c * 3 + k holds tap k of input channel c
    bias: Tensor  # (C_out,)
    stride: int

    def __call__(self, x: Tensor) -> Tensor:
        """(N, T, C_in) -> (N, T', C_out). Channels-last keeps every layer one GEMM, no transposes."""
        if x.shape[1] == 1:  # both outer taps see only zero padding: skip 2/3 of the work
            center = self.weight.view(x.shape[2], 3, -1)[:, 1]
            return torch.relu_(torch.addmm(self.bias, x[:, 0], center)).unsqueeze(1)
        columns = F.pad(x, (0, 0, 1, 1)).unfold(1, 3, self.stride)  # (N, T', C_in, 3)
        n, t = columns.shape[:2]
        y = torch.addmm(self.bias, columns.reshape(n * t, -1), self.weight)
        return torch.relu_(y).view(n, t, -1)


@dataclass(frozen=True)
class _SileroNet:
    """The 16 kHz silero-vad network split into its feed-forward and recurrent parts."""

    window: Tensor  # (256,) periodic Hann, read from the model's STFT basis
    encoder: tuple[_Conv, ...]
    lstm: nn.LSTM  # one layer, the LSTMCell's weights
    head_weight: Tensor  # (128,)
    head_bias: Tensor  # ()

    def encode(self, windows: Tensor) -> Tensor:
        """(N, 576) model inputs -> (N, 128) LSTM inputs; no state, so any N at once."""
        padded = F.pad(windows.unsqueeze(1), (0, _REFLECT_PAD), mode="reflect").squeeze(1)
        # The model's STFT is a conv with a windowed-DFT basis; an FFT gives the same numbers
        # (checked in _check_stft_basis) at a fraction of the multiply-adds.
        steps = padded.unfold(1, _FFT_SIZE, _FFT_HOP) * self.window  # (N, W, 256)
        spectrum = torch.view_as_real(torch.fft.rfft(steps))  # (N, W, F, 2)
        real, imag = spectrum.unbind(-1)
        h = torch.sqrt(real * real + imag * imag)  # (N, W, F)
        for conv in self.encoder:
            h = conv(h)
        return h[:, 0]  # the last conv leaves one step

    def recur(
        self, features: list[Tensor], state: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Step the LSTM through one time block of S streams.

        features: per stream (T_s, 128), T_s non-increasing; state: (h, c), each (1, S, 128).
        Returns probabilities (S, max T_s), meaningless past each T_s, and the state after each
        stream's last window. Packing lets streams that end inside the block drop out of the
        batch instead of being computed on padding.
        """
        out, state = self.lstm(pack_sequence(features), state)
        hidden, _ = pad_packed_sequence(out, batch_first=True)  # (S, T, 128)
        return self.decode(hidden), state

    def decode(self, hidden: Tensor) -> Tensor:
        """(..., 128) LSTM outputs -> (...) speech probabilities (ReLU, 1x1 conv, sigmoid)."""
        return torch.sigmoid(torch.relu(hidden) @ self.head_weight + self.head_bias)


def _load_silero_16k() -> torch.jit.ScriptModule:
    """The 16 kHz submodule of the TorchScript model that ships inside the silero-vad wheel."""
    import silero_vad

    with warnings.catch_warnings():  # deprecation notices from torch.jit.load and silero's loader
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return silero_vad.load_silero_vad(onnx=False)._model


def _check_layout(model: torch.jit.ScriptModule) -> None:
    """Fail loudly if a silero-vad release changes the network this module replicates."""
    found = (
        model.context_size_samples,
        model.stft.hop_length,
        model.stft.filter_length,
        tuple(getattr(model.encoder, str(i)).reparam_conv.stride[0] for i in range(4)),
        tuple(getattr(model.encoder, str(i)).reparam_conv.padding[0] for i in range(4)),
        tuple(model.decoder.rnn.weight_hh.shape),
    )
    expected = (CONTEXT_SAMPLES, _FFT_HOP, _FFT_SIZE, _ENCODER_STRIDES, (1, 1, 1, 1), (512, 128))
    if found != expected:
        raise RuntimeError(
            f"silero-vad's 16 kHz network is not the layout BatchedSileroVad replicates "
            f"(context, hop, fft, strides, paddings, LSTM): found {found}, expected {expected}. "
            "Pin silero-vad to a 6.x release this module was checked against."
        )


def _check_stft_basis(basis: Tensor) -> Tensor:
    """Return the analysis window after checking the basis is window x (cos, -sin) of a real DFT.

    The FFT in `_SileroNet.encode` is only equivalent to the model's conv under that condition.
    """
    basis = basis[:, 0, :].double()  # (2 * F, 256): real rows, then imaginary rows
    window = basis[0]  # the 0 Hz cosine row is the window itself
    n = torch.arange(_FFT_SIZE, dtype=torch.float64)
    k = torch.arange(_FFT_SIZE // 2 + 1, dtype=torch.float64)[:, None]
    phase = 2 * math.pi * k * n / _FFT_SIZE
    expected = torch.cat([torch.cos(phase), -torch.sin(phase)]) * window
    error = (basis - expected).abs().max().item()
    if error > 1e-6:
        raise RuntimeError(f"silero-vad STFT basis is not a windowed DFT (max error {error:.2e})")
    return window.float()


def _build_net(model: torch.jit.ScriptModule) -> _SileroNet:
    """Copy the 16 kHz weights out of the TorchScript module into `_SileroNet`."""
    _check_layout(model)
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    encoder = tuple(
        _Conv(
            weight=weights[f"encoder.{i}.reparam_conv.weight"].flatten(1).t().contiguous(),
            bias=weights[f"encoder.{i}.reparam_conv.bias"],
            stride=stride,
        )
        for i, stride in enumerate(_ENCODER_STRIDES)
    )
    lstm = nn.LSTM(_HIDDEN, _HIDDEN, batch_first=True)
    with torch.no_grad():  # nn.LSTM and LSTMCell share the (input, forget, cell, output) order
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(lstm, f"{name}_l0").copy_(weights[f"decoder.rnn.{name}"])
    lstm.eval().requires_grad_(False)
    return _SileroNet(
        window=_check_stft_basis(weights["stft.forward_basis_buffer"]),
        encoder=encoder,
        lstm=lstm,
        head_weight=weights["decoder.decoder.2.weight"].reshape(_HIDDEN),
        head_bias=weights["decoder.decoder.2.bias"].reshape(()),
    )


def _model_inputs(audio: Tensor, first: int, count: int) -> Tensor:
    """(count, 576) inputs for windows first .. first + count - 1 of one stream.

    As stock: each window is preceded by the previous window's last 64 samples (zeros before the
    first), and the last window is zero-padded to 512. A view into `audio` when no padding is
    needed, so a block costs one copy at most.
    """
    start = first * FRAME_SAMPLES - CONTEXT_SAMPLES
    stop = (first + count) * FRAME_SAMPLES
    if start >= 0 and stop <= audio.numel():
        span = audio[start:stop]
    else:
        span = audio.new_zeros(stop - start)
        lo, hi = max(start, 0), min(stop, audio.numel())
        span[lo - start : hi - start] = audio[lo:hi]
    return span.unfold(0, _MODEL_INPUT, FRAME_SAMPLES)


def _as_stream(stream: np.ndarray) -> Tensor:
    """Validate one stream and view it as a float32 tensor (copying only to convert dtype)."""
    array = np.ascontiguousarray(stream, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"each stream must be 1-D mono audio, got shape {array.shape}")
    if not array.flags.writeable:
        # A read-only view (e.g. of an Arrow buffer) is only ever read here: no copy needed.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(array)
    return torch.from_numpy(array)


class BatchedSileroVad:
    """Loads silero-vad once (call in an actor's __init__), scores many streams per call.

    Streams are sorted by length and scored in groups of `max_streams` neighbours, so a 5 s clip
    never waits on padding to the length of a 2 h one. Each group advances in time blocks of
    about `block_windows` windows in total (split over the streams still running), which bounds
    working memory at roughly 4 kB per window of a block (~16 MB at the default) whatever the
    stream lengths; only the returned probabilities (4 bytes per 512 samples) grow with them.
    """

    def __init__(
        self, num_threads: int | None = None, *, max_streams: int = 32, block_windows: int = 4096
    ) -> None:
        """num_threads: if given, set torch's intra-op threads (process-wide) to it."""
        if max_streams < 1 or block_windows < 1:
            raise ValueError(
                f"max_streams and block_windows must be >= 1, got {max_streams}, {block_windows}"
            )
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.max_streams = max_streams
        self.block_windows = block_windows
        self._net = _build_net(_load_silero_16k())

    def speech_probs(self, streams: list[np.ndarray]) -> list[np.ndarray]:
        """Each stream: 1-D float32 mono audio at 16 kHz. Returns, per stream, float32 speech
        probabilities, one per 512-sample window (ceil(len/512) values, last window zero-padded
        as stock does), equal to stock within 1e-4."""
        audio = [_as_stream(stream) for stream in streams]
        results = [np.zeros(0, dtype=np.float32) for _ in audio]
        # Longest first: groups hold similar lengths and packing needs non-increasing lengths.
        order = sorted(
            (i for i, a in enumerate(audio) if a.numel()), key=lambda i: -audio[i].numel()
        )
        with torch.inference_mode():
            for g in range(0, len(order), self.max_streams):
                group = order[g : g + self.max_streams]
                for i, probs in zip(
                    group, self._score_group([audio[i] for i in group]), strict=True
                ):
                    results[i] = probs
        return results

    def _score_group(self, group: list[Tensor]) -> list[np.ndarray]:
        """Probabilities for streams sorted longest first, advancing all of them block by block."""
        counts = [num_windows(a.numel()) for a in group]
        pieces: list[list[Tensor]] = [[] for _ in group]
        zeros = torch.zeros(1, len(group), _HIDDEN)
        state = (zeros, zeros.clone())
        first = 0
        while first < counts[0]:
            running = sum(count > first for count in counts)  # a prefix: counts are sorted
            span = max(1, self.block_windows // running)
            lengths = [min(span, counts[s] - first) for s in range(running)]
            inputs = torch.cat([_model_inputs(group[s], first, n) for s, n in enumerate(lengths)])
            # Encoding in cache-sized chunks measured up to 1.5x faster than 4096 windows at once.
            features = torch.cat([self._net.encode(c) for c in inputs.split(_ENCODE_CHUNK)])
            features = features.split(lengths)
            state = (state[0][:, :running], state[1][:, :running])
            probs, state = self._net.recur(list(features), state)
            for s, n in enumerate(lengths):
                pieces[s].append(probs[s, :n])
            first += span
        return [torch.cat(p).numpy() for p in pieces]


def vad_gain(streams: list[np.ndarray]) -> float:
    """Linear gain that brings one recording's loud frames to VAD_LEVEL_DBFS.

    Why: silero-vad's probabilities depend on the input level. Far-field meeting audio (RMS near
    -40 dBFS) scores below the stock threshold where close-talk speech scores near 1, so a 30 s
    clip with 6 s of speech at -39 dBFS came out as "no speech". The level is the 97th percentile
    of the 32 ms frame powers over all channels together (speech peaks, even when speech fills
    only a few percent of the file; background noise in the pauses does not move it), and all
    channels get the same gain, so one channel's crosstalk stays as far below the other's speech
    as it was recorded. The gain is capped at +40 dB, and a recording whose loud frames are
    below -90 dBFS (digital silence, dither) keeps gain 1. Attenuation is allowed: a loud
    recording is brought down to the same level. Only the VAD's input is scaled: levels, SNR and
    the audio that later steps read stay as recorded.
    """
    powers = [frame_powers(np.asarray(s), FRAME_SAMPLES) for s in streams if len(s)]
    if not powers:
        return 1.0
    loud = float(np.percentile(np.concatenate(powers), _LEVEL_PERCENTILE))
    loud_dbfs = 10 * math.log10(max(loud, 1e-20))
    if loud_dbfs < _SILENT_DBFS:
        return 1.0
    return 10 ** (min(VAD_LEVEL_DBFS - loud_dbfs, _MAX_VAD_GAIN_DB) / 20)


def level_normalized(streams: list[np.ndarray]) -> list[np.ndarray]:
    """The channels of one recording scaled by their common `vad_gain`, as float32: what
    every caller of `BatchedSileroVad.speech_probs` scores."""
    gain = np.float32(vad_gain(streams))
    return [np.asarray(stream, dtype=np.float32) * gain for stream in streams]


@dataclass(frozen=True)
class _Params:
    """speech_timestamps' arguments converted to samples, as stock converts them."""

    threshold: float
    neg_threshold: float
    min_speech: float
    max_speech: float
    min_silence: float
    min_split_silence: float  # silences longer than this are candidate cuts at max duration
    pad: float


def _params(
    threshold: float,
    neg_threshold: float | None,
    min_speech_duration_ms: int,
    max_speech_duration_s: float,
    min_silence_duration_ms: int,
    speech_pad_ms: int,
) -> _Params:
    pad = SAMPLE_RATE_HZ * speech_pad_ms / 1000
    if neg_threshold is None:
        neg_threshold = max(threshold - _DEFAULT_NEG_THRESHOLD_GAP, 0.01)
    return _Params(
        threshold=threshold,
        neg_threshold=neg_threshold,
        min_speech=SAMPLE_RATE_HZ * min_speech_duration_ms / 1000,
        # Stock leaves room for one window and both paddings inside the maximum.
        max_speech=SAMPLE_RATE_HZ * max_speech_duration_s - FRAME_SAMPLES - 2 * pad,
        min_silence=SAMPLE_RATE_HZ * min_silence_duration_ms / 1000,
        min_split_silence=SAMPLE_RATE_HZ * _MIN_SILENCE_AT_MAX_SPEECH_MS / 1000,
        pad=pad,
    )


def _raw_regions(probs: list[float], num_samples: int, p: _Params) -> list[tuple[int, int]]:
    """Speech regions in samples, before padding: stock's hysteresis state machine.

    Speech starts at the first window >= threshold and ends where a run of windows < the negative
    threshold began, once that run lasts min_silence. A region that outgrows max_speech is cut at
    the longest silence (> 98 ms) seen inside it, the remainder restarting where speech resumed
    after that silence; with no such silence it is cut at the current window. As in stock, a
    silence start of 0 means "none" (it can never begin at window 0 while in speech).
    """
    regions: list[tuple[int, int]] = []
    start: int | None = None  # None: not in speech
    silence_start = 0
    silences: list[tuple[int, int]] = []  # (start, length) inside the current region
    for i, prob in enumerate(probs):
        here = i * FRAME_SAMPLES
        if prob >= p.threshold and silence_start:
            if here - silence_start > p.min_split_silence:
                silences.append((silence_start, here - silence_start))
            silence_start = 0
        if prob >= p.threshold and start is None:
            start = here
            continue
        if start is not None and here - start > p.max_speech:
            if silences:
                cut, length = max(silences, key=lambda s: s[1])  # first of equals, as stock
                regions.append((start, cut))
                start, silence_start, silences = cut + length, 0, []
            else:
                regions.append((start, here))
                start, silence_start, silences = None, 0, []
                continue
        if prob < p.neg_threshold and start is not None:
            if not silence_start:
                silence_start = here
            if here - silence_start < p.min_silence:
                continue
            if silence_start - start > p.min_speech:
                regions.append((start, silence_start))
            start, silence_start, silences = None, 0, []
    if start is not None and num_samples - start > p.min_speech:
        regions.append((start, num_samples))
    return regions


def _pad_regions(regions: list[tuple[int, int]], num_samples: int, pad: float) -> list[list[int]]:
    """Widen regions by `pad` samples each side; neighbours closer than 2 * pad split the gap.

    The int() truncations and // follow stock so sample positions match it exactly.
    """
    padded = [list(region) for region in regions]
    for i, region in enumerate(padded):
        if i == 0:
            region[0] = int(max(0, region[0] - pad))
        if i == len(padded) - 1:
            region[1] = int(min(num_samples, region[1] + pad))
            continue
        following = padded[i + 1]
        gap = following[0] - region[1]
        if gap < 2 * pad:
            region[1] += int(gap // 2)
            following[0] = int(max(0, following[0] - gap // 2))
        else:
            region[1] = int(min(num_samples, region[1] + pad))
            following[0] = int(max(0, following[0] - pad))
    return padded


def speech_timestamps(
    probs: np.ndarray,
    num_samples: int,
    *,
    threshold: float = 0.5,
    neg_threshold: float | None = None,
    min_speech_duration_ms: int = 250,
    max_speech_duration_s: float = float("inf"),
    min_silence_duration_ms: int = 100,
    speech_pad_ms: int = 30,
    time_resolution: int = 1,
) -> list[tuple[float, float]]:
    """Speech regions in seconds, computed from probabilities exactly as stock
    silero_vad.get_speech_timestamps(..., return_seconds=True) would on the same audio
    (same thresholds, padding, max-duration splitting).

    probs: `BatchedSileroVad.speech_probs` output for a stream of `num_samples` samples.
    time_resolution: decimals kept, as stock's argument of that name; stock's default of 1 rounds
    to 0.1 s, pass 3 for millisecond boundaries. Stock's `min_silence_at_max_speech` (98 ms) and
    `use_max_poss_sil_at_max_speech` (True) are fixed at their defaults.
    """
    if len(probs) != num_windows(num_samples):
        raise ValueError(
            f"{len(probs)} probabilities do not fit {num_samples} samples "
            f"(expected ceil({num_samples} / {FRAME_SAMPLES}) = {num_windows(num_samples)})"
        )
    params = _params(
        threshold,
        neg_threshold,
        min_speech_duration_ms,
        max_speech_duration_s,
        min_silence_duration_ms,
        speech_pad_ms,
    )
    # Python floats, as stock's .item(): comparing float32 values against float64 thresholds.
    regions = _raw_regions(np.asarray(probs, dtype=np.float64).tolist(), num_samples, params)
    duration = num_samples / SAMPLE_RATE_HZ
    return [
        (
            max(round(start / SAMPLE_RATE_HZ, time_resolution), 0),
            min(round(end / SAMPLE_RATE_HZ, time_resolution), duration),
        )
        for start, end in _pad_regions(regions, num_samples, params.pad)
    ]
