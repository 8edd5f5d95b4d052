"""MinMo's voice encoder: 16 kHz waveforms -> SenseVoice encoder frames, one per 60 ms.

This module owns two things:

* the SenseVoice frontend, computed for a whole padded batch at once: Kaldi-style log-mel
  filterbank (80 bins, 25 ms hamming window, 10 ms shift, dither 0), low-frame-rate stacking
  (LFR, m=7 frames every n=6, padded the way funasr's ``apply_lfr`` pads) and global CMVN from
  the model's ``am.mvn``. funasr's ``WavFrontend`` computes the same thing one utterance at a
  time in a Python loop; the tests hold the two to 1e-3 on real speech.
* funasr's own ``SenseVoiceEncoderSmall`` (imported, not re-implemented), plus loading the
  ``encoder.*`` weights out of a SenseVoice model directory as published on ModelScope / HF.

It must not add SenseVoice's four task queries (language, event, emotion, text-norm embeddings
that ``SenseVoiceSmall.encode`` prepends before encoding): MinMo feeds the encoder's outputs for
the speech frames alone to its input projector, so there is no CTC head and no query embedding
here, and output frame i is the encoding of feature frame i.

Dimension legend: B batch, T samples (16 kHz), F LFR frames (60 ms each), D = n_mels * lfr_m
(560) feature size, H encoder output size.
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from minmo.config import ConfigError
from schemas.units import SAMPLE_RATE_HZ

logger = logging.getLogger(__name__)

# Keys that funasr's SenseVoiceEncoderSmall accepts in encoder_conf but never reads (its layers
# are built with fixed positional arguments), so dropping them keeps funasr's exact behaviour.
_IGNORED_ENCODER_KEYS = frozenset(
    {
        "positional_dropout_rate",
        "stochastic_depth_rate",
        "input_layer",
        "pos_enc_class",
        "normalize_before",
        "concat_after",
        "positionwise_layer_type",
        "positionwise_conv_kernel_size",
        "padding_idx",
        "selfattention_layer_type",
    }
)
# funasr WavFrontend keys -> our field names.
_FRONTEND_KEYS = {
    "fs": "sample_rate",
    "window": "window",
    "n_mels": "n_mels",
    "frame_length": "frame_length_ms",
    "frame_shift": "frame_shift_ms",
    "lfr_m": "lfr_m",
    "lfr_n": "lfr_n",
}
# WavFrontend keys we read but do not model: dither is training-time noise (we compute
# deterministic features), the CMVN file is the directory's am.mvn, the length filters belong
# to data loading.
_IGNORED_FRONTEND_KEYS = frozenset(
    {"dither", "cmvn_file", "filter_length_min", "filter_length_max"}
)
# WavFrontend keys we follow only at funasr's defaults.
_FIXED_FRONTEND_KEYS = {"snip_edges": True, "upsacle_samples": True}
_WINDOWS = ("hamming", "hanning", "povey", "rectangular")
_ENERGY_FLOOR = torch.finfo(torch.float32).eps  # Kaldi/torchaudio floor before the log
_INT16_SCALE = 32768.0  # funasr scales [-1, 1] floats to int16 range before fbank
_PREEMPHASIS = 0.97
_LOW_FREQ_HZ = 20.0


@dataclass
class VoiceEncoderConfig:
    """SenseVoice encoder + frontend hyper-parameters.

    Encoder fields carry funasr's ``encoder_conf`` names (including its ``sanm_shfit``
    spelling); defaults are the released SenseVoiceSmall ``config.yaml``.
    """

    output_size: int = 512
    """Encoder width H (what the input projector reads)."""
    attention_heads: int = 4
    linear_units: int = 2048
    """Feed-forward hidden size."""
    num_blocks: int = 50
    """SAN-M blocks before ``after_norm`` (the first takes input_size)."""
    tp_blocks: int = 20
    """SAN-M blocks after ``after_norm`` (followed by ``tp_norm``)."""
    kernel_size: int = 11
    """Depth-wise FSMN memory kernel in each attention block."""
    sanm_shfit: int = 0
    """FSMN look-ahead shift (funasr's spelling)."""
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    input_size: int = 560
    """Feature size D = n_mels * lfr_m."""
    sample_rate: int = SAMPLE_RATE_HZ
    n_mels: int = 80
    lfr_m: int = 7
    """Consecutive fbank frames stacked into one LFR frame."""
    lfr_n: int = 6
    """Fbank frames between LFR frames: 6 x 10 ms = one frame per 60 ms."""
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window: str = "hamming"

    def __post_init__(self) -> None:
        if self.input_size != self.n_mels * self.lfr_m:
            raise ConfigError(
                f"input_size={self.input_size} must equal n_mels * lfr_m = "
                f"{self.n_mels} * {self.lfr_m} = {self.n_mels * self.lfr_m}; set input_size to that"
            )
        if self.output_size % self.attention_heads:
            raise ConfigError(
                f"output_size={self.output_size} is not divisible by "
                f"attention_heads={self.attention_heads}; pick heads that divide it"
            )
        if self.num_blocks < 1 or self.tp_blocks < 0:
            raise ConfigError(
                f"need num_blocks >= 1 and tp_blocks >= 0, got {self.num_blocks}, {self.tp_blocks}"
            )
        if self.window not in _WINDOWS:
            raise ConfigError(f"window={self.window!r} is not one of {_WINDOWS}")
        if self.lfr_m < 1 or self.lfr_n < 1:
            raise ConfigError(f"lfr_m and lfr_n must be >= 1, got {self.lfr_m}, {self.lfr_n}")

    @property
    def frame_seconds(self) -> float:
        """Seconds per output frame (0.06 for SenseVoice)."""
        return self.lfr_n * self.frame_shift_ms / 1000.0

    @classmethod
    def tiny(cls) -> VoiceEncoderConfig:
        """A few hundred thousand parameters: for CPU tests (no dropout: runs are exact)."""
        return cls(
            output_size=64,
            attention_heads=2,
            linear_units=128,
            num_blocks=2,
            tp_blocks=1,
            dropout_rate=0.0,
            attention_dropout_rate=0.0,
        )

    @classmethod
    def small(cls) -> VoiceEncoderConfig:
        """The released SenseVoiceSmall encoder: 221.1 M parameters (70 SAN-M blocks)."""
        return cls()

    @classmethod
    def full(cls) -> VoiceEncoderConfig:
        """Stand-in for SenseVoice-Large, MinMo's voice encoder (~636 M parameters in the paper).

        SenseVoice-Large is not public and the paper gives no widths. We keep SenseVoiceSmall's
        SAN-M architecture and frontend and scale it: width 1024 (head size 128 as in Small, so
        8 heads), feed-forward 4096, 50 blocks (30 + Small's 20 tp_blocks). That is
        628,952,160 parameters, 1.1 % under 636 M; 51 blocks would be 0.9 % over.
        ``output_size`` (1024) is what ``InputProjectorConfig.full().encoder_size`` reads.
        """
        return cls(
            output_size=1024, attention_heads=8, linear_units=4096, num_blocks=30, tp_blocks=20
        )

    @classmethod
    def from_funasr(
        cls, encoder_conf: dict[str, Any], frontend_conf: dict[str, Any] | None = None, **extra
    ) -> VoiceEncoderConfig:
        """Map a funasr ``config.yaml``'s ``encoder_conf`` / ``frontend_conf`` onto this config.

        Keys funasr itself ignores are dropped; any other unknown key is an error naming the
        nearest valid one. ``extra`` sets fields directly (e.g. ``input_size``).
        """
        own = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in encoder_conf.items():
            if key in _IGNORED_ENCODER_KEYS:
                continue
            if key not in own or key in _FRONTEND_KEYS.values():
                raise ValueError(_unknown_key("encoder_conf", key, own | _IGNORED_ENCODER_KEYS))
            kwargs[key] = value
        for key, value in (frontend_conf or {}).items():
            if key in _IGNORED_FRONTEND_KEYS:
                continue
            if key in _FIXED_FRONTEND_KEYS:
                if bool(value) != _FIXED_FRONTEND_KEYS[key]:
                    raise ValueError(
                        f"frontend_conf.{key}={value!r} is not supported; only "
                        f"{_FIXED_FRONTEND_KEYS[key]} (funasr's default)"
                    )
                continue
            if key not in _FRONTEND_KEYS:
                valid = set(_FRONTEND_KEYS) | _IGNORED_FRONTEND_KEYS | set(_FIXED_FRONTEND_KEYS)
                raise ValueError(_unknown_key("frontend_conf", key, valid))
            kwargs[_FRONTEND_KEYS[key]] = value
        kwargs.update(extra)
        if "input_size" not in kwargs:
            kwargs["input_size"] = kwargs.get("n_mels", 80) * kwargs.get("lfr_m", 7)
        return cls(**kwargs)

    def encoder_conf(self) -> dict[str, Any]:
        """The ``encoder_conf`` for funasr's ``SenseVoiceEncoderSmall`` (without input_size)."""
        return {
            "output_size": self.output_size,
            "attention_heads": self.attention_heads,
            "linear_units": self.linear_units,
            "num_blocks": self.num_blocks,
            "tp_blocks": self.tp_blocks,
            "dropout_rate": self.dropout_rate,
            "attention_dropout_rate": self.attention_dropout_rate,
            "kernel_size": self.kernel_size,
            "sanm_shfit": self.sanm_shfit,
        }

    def frontend_conf(self) -> dict[str, Any]:
        """The matching ``frontend_conf`` for funasr's ``WavFrontend`` (dither 0)."""
        conf = {theirs: getattr(self, ours) for theirs, ours in _FRONTEND_KEYS.items()}
        conf["dither"] = 0.0
        return conf


def _unknown_key(section: str, key: str, valid: set[str]) -> str:
    near = difflib.get_close_matches(key, sorted(valid), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return f"unknown key {key!r} in {section}{hint} (valid: {', '.join(sorted(valid))})"


def _window_size(sample_rate: int, ms: float | Tensor) -> int:
    # Kaldi / torchaudio arithmetic (truncation, not rounding).
    return int(sample_rate * ms * 0.001)


def _kaldi_window(kind: str, size: int) -> Tensor:
    """Kaldi's analysis window of `size` samples (float64 arithmetic, float32 result)."""
    return _kaldi_windows(kind, torch.tensor([size]), size)[0]


def _kaldi_windows(kind: str, sizes: Tensor, width: int) -> Tensor:
    """`_kaldi_window` of each size in `sizes` (K,), zero-padded to `width`: (K, width)."""
    n = torch.arange(width, dtype=torch.float64, device=sizes.device)[None, :]
    size = sizes.to(torch.float64)[:, None]
    cosine = torch.cos(2 * math.pi * n / (size - 1).clamp_min(1))
    if kind == "hamming":
        w = 0.54 - 0.46 * cosine
    elif kind == "hanning":
        w = 0.5 - 0.5 * cosine
    elif kind == "povey":
        w = (0.5 - 0.5 * cosine).pow(0.85)
    else:
        w = torch.ones_like(cosine)
    return torch.where(n < size, w, 0.0).float()


def _kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int) -> Tensor:
    """Kaldi's triangular mel filters (20 Hz .. Nyquist) over the n_fft // 2 + 1 rfft bins.

    Kaldi's mel scale is 1127 ln(1 + f / 700); filters are triangles in mel, spaced evenly, and
    the Nyquist bin gets weight 0. Returns (n_mels, n_fft // 2 + 1) float32.
    """

    def mel(f: Tensor) -> Tensor:
        return 1127.0 * torch.log1p(f / 700.0)

    edges = torch.tensor([_LOW_FREQ_HZ, sample_rate / 2.0], dtype=torch.float64)
    mel_low, mel_high = mel(edges).tolist()
    delta = (mel_high - mel_low) / (n_mels + 1)
    left = mel_low + delta * torch.arange(n_mels, dtype=torch.float64)[:, None]
    center, right = left + delta, left + 2 * delta
    bins = mel(torch.arange(n_fft // 2, dtype=torch.float64) * (sample_rate / n_fft))[None, :]
    weights = torch.minimum((bins - left) / (center - left), (right - bins) / (right - center))
    weights = weights.clamp_min(0.0)
    return torch.cat([weights, weights.new_zeros(n_mels, 1)], dim=1).float()


def _log_mel(frames: Tensor, window: Tensor, mel_banks: Tensor) -> Tensor:
    """Kaldi fbank of already-cut frames (..., W) -> (..., n_mels): DC removal, pre-emphasis,
    window, power spectrum at the next power of two, mel, log."""
    n_fft = 2 * (mel_banks.shape[1] - 1)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = (frames - _PREEMPHASIS * previous) * window
    spectrum = torch.fft.rfft(frames, n=n_fft)
    power = spectrum.real.square() + spectrum.imag.square()
    return torch.matmul(power, mel_banks.T).clamp_min(_ENERGY_FLOOR).log()


def load_am_mvn(path: str | Path) -> tuple[Tensor, Tensor]:
    """Read a Kaldi nnet-text CMVN file (``<AddShift>`` / ``<Rescale>``) with funasr's reader.

    Returns (shift, scale), each (D,); features are normalised as (x + shift) * scale.
    """
    from funasr.frontends.wav_frontend import load_cmvn

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CMVN file not found: {path}")
    cmvn = load_cmvn(str(path))
    if cmvn.ndim != 2 or cmvn.shape[0] != 2 or cmvn.shape[1] == 0:
        raise ValueError(
            f"{path} has no usable <AddShift> and <Rescale> vectors (parsed shape "
            f"{tuple(cmvn.shape)}); expected Kaldi nnet text with '<LearnRateCoef> 0 [ ... ]' lines"
        )
    return cmvn[0].clone(), cmvn[1].clone()


class VoiceEncoder(nn.Module):
    """Waveforms (B, T) -> SenseVoice encoder frames (B, F, H), one per 60 ms.

    ``cmvn`` is (shift, scale), each (D,), applied as (x + shift) * scale after LFR. It lives in
    persistent buffers that default to the identity, so every VoiceEncoder has the same state
    dict keys and a checkpoint carries the CMVN it was trained with.
    """

    def __init__(self, config: VoiceEncoderConfig, cmvn: tuple[Tensor, Tensor] | None = None):
        super().__init__()
        from funasr.models.sense_voice.model import SenseVoiceEncoderSmall

        self.config = config
        self.encoder = SenseVoiceEncoderSmall(input_size=config.input_size, **config.encoder_conf())
        dim = config.input_size
        self.register_buffer("cmvn_shift", torch.zeros(dim))
        self.register_buffer("cmvn_scale", torch.ones(dim))
        if cmvn is not None:
            self.set_cmvn(*cmvn)
        self._win = _window_size(config.sample_rate, config.frame_length_ms)
        self._hop = _window_size(config.sample_rate, config.frame_shift_ms)
        # Window and mel filters are constants derived from the config, cached per device and
        # window size rather than registered as buffers, so meta-device construction followed
        # by to_empty() / load_state_dict() cannot leave them uninitialised.
        self._constants: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}

    @property
    def output_size(self) -> int:
        return self.config.output_size

    def set_cmvn(self, shift: Tensor, scale: Tensor) -> None:
        dim = self.config.input_size
        if tuple(shift.shape) != (dim,) or tuple(scale.shape) != (dim,):
            raise ValueError(
                f"CMVN vectors must be ({dim},) to match input_size, got "
                f"{tuple(shift.shape)} and {tuple(scale.shape)}"
            )
        with torch.no_grad():
            self.cmvn_shift.copy_(shift)
            self.cmvn_scale.copy_(scale)

    def _window_and_banks(self, window_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (str(device), window_size)
        if key not in self._constants:
            n_fft = 1 << (window_size - 1).bit_length()  # Kaldi's round-to-power-of-two
            with torch.device("cpu"):
                window = _kaldi_window(self.config.window, window_size)
                banks = _kaldi_mel_banks(self.config.n_mels, n_fft, self.config.sample_rate)
            self._constants[key] = (window.to(device), banks.to(device))
        return self._constants[key]

    # ------------------------------------------------------------------ frontend
    def fbank(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Kaldi log-mel fbank (snip_edges) of the batch: (B, N, n_mels) and frames per item.

        Frames past an item's count are 0 (not computed); callers must respect the counts.
        """
        if waves.dim() != 2:
            raise ValueError(f"waves must be (B, T), got shape {tuple(waves.shape)}")
        lengths = lengths.to(device=waves.device, dtype=torch.long)
        if lengths.shape != waves.shape[:1]:
            raise ValueError(f"lengths must be (B,)={waves.shape[0]}, got {tuple(lengths.shape)}")
        x = waves.float() * _INT16_SCALE
        long_enough = lengths >= self._win
        counts = torch.where(long_enough, 1 + (lengths - self._win).clamp_min(0) // self._hop, 1)
        # Everything the host needs, in one device-to-host copy.
        bad, n_max, n_long = torch.stack(
            [((lengths < 2) | (lengths > waves.shape[1])).sum(), counts.max(), long_enough.sum()]
        ).tolist()
        if bad:
            raise ValueError(
                f"each length must be in [2, T={waves.shape[1]}] samples, got {lengths.tolist()}"
            )
        out = x.new_zeros(x.shape[0], n_max, self.config.n_mels)
        if n_long:
            frames = x.unfold(1, self._win, self._hop)[:, :n_max]
            # Only each item's own frames: padding frames would cost as much as real ones.
            real = torch.arange(frames.shape[1], device=x.device) < counts[:, None]
            real = torch.nonzero(real & long_enough[:, None], as_tuple=True)
            window, banks = self._window_and_banks(self._win, x.device)
            out[real] = _log_mel(frames[real], window, banks)
        if n_long < x.shape[0]:
            # Utterances shorter than one window: funasr shrinks the window to the whole
            # utterance (one frame, FFT at the next power of two). Rare; batched per distinct
            # window size (a handful at most), so each clip gets exactly funasr's computation.
            short = torch.nonzero(~long_enough).flatten()
            rate = self.config.sample_rate
            ms = lengths[short].float() / rate * 1000  # float32, as funasr does
            wins = (rate * ms * 0.001).long().clamp(1, self._win - 1)  # Kaldi's truncation
            for win in torch.unique(wins).tolist():
                rows = short[wins == win]
                window, banks = self._window_and_banks(win, x.device)
                out[rows, 0] = _log_mel(x[rows, :win], window, banks)
        return out, counts

    def lfr(self, fbank: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
        """Low-frame-rate stacking as funasr's ``apply_lfr``, batched by index arithmetic.

        LFR frame i stacks fbank frames 6i - 3 .. 6i + 3 (for m=7, n=6), clamped into
        [0, count - 1]: funasr's left padding with (m-1)//2 copies of the first frame and its
        right padding with copies of the last. ceil(count / n) frames per item.
        """
        m, n = self.config.lfr_m, self.config.lfr_n
        out_counts = (counts + n - 1) // n
        f_max = int(out_counts.max())
        start = torch.arange(f_max, device=fbank.device)[:, None] * n - (m - 1) // 2
        index = (start + torch.arange(m, device=fbank.device)[None, :])[None].clamp_min(0)
        index = torch.minimum(index, (counts - 1)[:, None, None])  # (B, F, m)
        batch, _, bins = fbank.shape
        gathered = torch.gather(fbank, 1, index.reshape(batch, -1, 1).expand(-1, -1, bins))
        return gathered.reshape(batch, f_max, m * bins), out_counts

    def features(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) float 16 kHz waves in [-1, 1] and (B,) sample counts -> (B, F, D) features
        (fbank -> LFR -> CMVN; zero past each length) and (B,) frame counts."""
        with torch.autocast(device_type=waves.device.type, enabled=False):
            fbank, counts = self.fbank(waves, lengths)
            feats, feat_lengths = self.lfr(fbank, counts)
            feats = (feats + self.cmvn_shift) * self.cmvn_scale
            valid = torch.arange(feats.shape[1], device=feats.device) < feat_lengths[:, None]
            feats = feats.masked_fill(~valid[..., None], 0.0)
        return feats, feat_lengths

    # ------------------------------------------------------------------ encoder
    def encode_features(self, feats: Tensor, feat_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, F, D) features -> (B, F, H) encoder outputs (zero past each length), (B,) long."""
        if feats.dim() != 3 or feats.shape[-1] != self.config.input_size:
            raise ValueError(
                f"feats must be (B, F, {self.config.input_size}), got {tuple(feats.shape)}"
            )
        feat_lengths = feat_lengths.to(device=feats.device, dtype=torch.long)
        # funasr scales its input in place; clone so the caller's tensor (or autograd) is safe.
        out, out_lengths = self.encoder(feats.clone(), feat_lengths)
        out_lengths = out_lengths.long()
        valid = torch.arange(out.shape[1], device=out.device) < out_lengths[:, None]
        return out.masked_fill(~valid[..., None], 0.0), out_lengths

    def forward(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) waves, (B,) sample counts -> (B, F, H) encoder frames, (B,) frame counts."""
        feats, feat_lengths = self.features(waves, lengths)
        return self.encode_features(feats, feat_lengths)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, config: VoiceEncoderConfig | None = None
    ) -> VoiceEncoder:
        """Load the encoder of a funasr SenseVoice model directory (as downloaded from
        ModelScope / Hugging Face): ``config.yaml`` (encoder_conf, frontend_conf), ``model.pt``
        (a full SenseVoiceSmall state dict, bare or under ``"state_dict"``/``"model"``) and,
        when present, ``am.mvn`` (CMVN).

        Only the ``encoder.*`` weights are loaded, strictly; the CTC head and task-query
        embeddings are dropped. ``config`` overrides what ``config.yaml`` says (e.g. dropout);
        its dimensions must still match the checkpoint.
        """
        import yaml

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"SenseVoice model directory not found: {model_dir}")
        config_path, weights_path = model_dir / "config.yaml", model_dir / "model.pt"
        for required in (config_path, weights_path):
            if not required.is_file():
                raise FileNotFoundError(
                    f"{model_dir} is not a SenseVoice model directory: missing {required.name} "
                    "(expected config.yaml, model.pt and optionally am.mvn)"
                )
        if config is None:
            conf = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
            encoder_name = conf.get("encoder")
            if encoder_name != "SenseVoiceEncoderSmall":
                raise ValueError(
                    f"{config_path}: encoder is {encoder_name!r}; only SenseVoiceEncoderSmall "
                    "is supported"
                )
            if not isinstance(conf.get("encoder_conf"), dict):
                raise ValueError(f"{config_path} has no encoder_conf mapping")
            extra = {}
            if "input_size" in conf:
                extra["input_size"] = conf["input_size"]
            config = VoiceEncoderConfig.from_funasr(
                conf["encoder_conf"], conf.get("frontend_conf"), **extra
            )

        mvn_path = model_dir / "am.mvn"
        cmvn = load_am_mvn(mvn_path) if mvn_path.is_file() else None
        if cmvn is None:
            logger.warning("%s has no am.mvn: features are not CMVN-normalised", model_dir)

        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        elif isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        if not isinstance(state, dict):
            raise ValueError(f"{weights_path} does not hold a state dict (got {type(state)})")
        encoder_state = {
            k.removeprefix("module.")[len("encoder.") :]: v
            for k, v in state.items()
            if k.removeprefix("module.").startswith("encoder.")
        }
        if not encoder_state:
            raise ValueError(
                f"{weights_path} has no 'encoder.*' weights (first keys: {list(state)[:5]})"
            )

        model = cls(config, cmvn=cmvn)
        mismatch = (
            f"{weights_path} encoder.* weights do not fit encoder_conf {config.encoder_conf()}"
        )
        try:
            result = model.encoder.load_state_dict(encoder_state, strict=False)
        except RuntimeError as error:  # shape mismatches
            first = str(error).splitlines()[1:4]
            raise ValueError(f"{mismatch}: {' '.join(line.strip() for line in first)}") from error
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{mismatch}: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
        return model

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, frame_seconds={self.config.frame_seconds}"


__all__ = [
    "VoiceEncoder",
    "VoiceEncoderConfig",
    "load_am_mvn",
]
