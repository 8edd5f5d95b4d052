"""The `offline` diarization backend: who spoke when in a mono mix, from speaker embeddings.

Owns: VAD -> speaker embeddings on sliding windows -> clustering -> per-frame labels -> segments,
and the refusal of recordings it cannot diarize (no speech; one voice only).
Must not: decode files, resample, or read anything but the model weights that ship inside the
silero-vad and resemblyzer wheels.

Pipeline, for float32 audio (channels, samples) at 16 kHz, downmixed to mono by the mean:

1. Speech regions: `BatchedSileroVad` probabilities of the level-normalised mix (`level_normalized`:
   quiet far-field audio is scored at close-talk level) -> `speech_timestamps` (ms resolution).
2. Embeddings: Resemblyzer's pretrained d-vector network (3-layer LSTM over 40 mel bands, 10 ms
   frames). Windows of `window_s` slide by `step_s` *inside* each speech region, so no window
   straddles a pause between turns; a region shorter than a window is one shorter window, so no
   speech goes unlabelled. Windows go through the LSTM in packed batches.
3. Clustering: the recording's mean embedding is subtracted (it is mostly channel and language,
   shared by both voices: subtracting it took window-level 2-way clustering on the real telephone
   call from 52 % to 98 % correct), then spectral clustering on the cosine affinity, each row
   pruned to its `affinity_keep` nearest neighbours. The count is `hints.num_speakers` (an exact
   override); else it is estimated between max(min_speakers, 2) and max_speakers (default 8) by
   `cluster_speakers`: each k whose clusters are all clearly distinct voices (no two less than
   `new_speaker_similarity` apart; the first k that fails ends the search) is a candidate, and
   the best mean silhouette among them wins. So a meeting (`--max-speakers 4`) gets 3 or 4
   voices where it has them, and a two-party call given the same bounds still gets 2.
4. One voice or several: clusters whose mean embeddings are more than `same_voice_similarity`
   cosine-similar are merged (a forced split of one voice gives such a pair, even when
   num_speakers=2 is hinted); a voice labelled on less than `min_speaker_s` of speech is folded
   into the others, unless it has at least `min_brief_speaker_s` and is clearly another person
   (`distinct_voice_similarity`): a quiet or brief second speaker stays. If one voice is left,
   or two never alternate (fewer than `min_speaker_changes` speaker changes: one voice whose
   language or channel changes mid-recording splits exactly like that), the recording is
   refused as `single_speaker`, unless the hints say one speaker is expected (num_speakers=1 or
   max_speakers=1), or a second look finds a brief voice: a speech region of at least
   `min_brief_speaker_s` whose mean embedding is less than `brief_voice_similarity`
   alike to the rest of the speech (1 s of a second voice is a single embedding window, too few
   to cluster). Fewer voices than the hints' lower bound (min_speakers or num_speakers,
   when >= 2 voices were found) is `indistinct_speakers`, naming what merged or was dropped.
5. Labels: every 10 ms speech frame takes the speaker whose centroid its covering windows are
   most similar to on average; label runs shorter than `min_turn_s` inside a region are absorbed
   by a neighbour; runs become SpeakerSegments, and same-speaker segments less than `max_gap_s`
   apart are joined by `merge_close`.

Overlap: one speaker per instant. Overlapped speech goes to whichever voice dominates the windows
covering it; the other voice's share counts as missed speech in DER.

Confidence of a segment: the mean over its frames of the margin between the cosine similarity to
the frame's own speaker centroid and to the next-best one (in mean-subtracted embedding space),
divided by `margin_scale` and clipped to [0, 1]. With one speaker (hinted) it is the mean cosine
similarity of the windows to the speaker's mean embedding.

Why Resemblyzer is re-implemented here instead of imported: `import resemblyzer` pulls in
webrtcvad, which fails to import without setuptools' pkg_resources, and librosa, which minmo
does not otherwise need; the network is four layers. `_SpeakerEncoder` loads the wheel's `pretrained.pt` into
the same layers and computes the same linear-power Slaney mel spectrogram as librosa, with torch.

Known limit: voices Resemblyzer cannot tell apart are refused as one voice. espeak-ng's
`fr-fr+f1` and `fr-fr+m5` were such a pair (centroids 0.96 cosine-similar, as similar as two
halves of one voice: the variants change pitch, not the voice), which is why the demo's French
female voice is built on `fr-be`.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, fields
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_sequence
from torchaudio.functional import melscale_fbanks

from minmo.audio.vad import BatchedSileroVad, level_normalized, speech_timestamps
from minmo.config import ConfigError
from minmo.diarization.types import (
    DiarizationRejected,
    SpeakerHints,
    SpeakerSegment,
    merge_close,
)
from schemas.quarantine import ReasonCode
from schemas.units import SAMPLE_RATE_HZ, Seconds

# Resemblyzer's front end (resemblyzer/hparams.py): 25 ms windows, 10 ms hop, 40 mel bands.
_N_FFT = 400
_HOP = 160
_N_MELS = 40
FRAME_S = _HOP / SAMPLE_RATE_HZ  # one mel frame, and the resolution of the labels
_HIDDEN = 256
_LAYERS = 3
_TARGET_DBFS = -30.0  # resemblyzer's preprocess_wav brings inputs to this level
_MEL_CHUNK_FRAMES = 30_000  # 5 min of frames per STFT call: bounds memory on long recordings
_EMBED_BATCH = 256  # windows per LSTM call: its per-step outputs are 100 KB per window
_MAX_CLUSTER_WINDOWS = 1500  # spectral clustering is O(n^3): subsample beyond this
_MIN_CLUSTER_SIZE = 2  # a cluster of fewer windows is an outlier, not a speaker


@dataclass(frozen=True)
class OfflineDiarizerConfig:
    """Knobs of the offline backend. Defaults were chosen across 19 two-speaker and 37 one-voice
    recordings (real telephone and read speech, and the espeak-ng demo corpus), not on one file;
    the accuracy they give is quoted in tests/diarization/test_offline.py."""

    vad_threshold: float = 0.5
    """Silero speech probability that starts speech (stock)."""
    vad_min_silence_ms: int = 100
    """Silence that ends a speech region (stock)."""
    window_s: Seconds = 1.0
    """Embedding window and hop. 1.0 s beat Resemblyzer's own 1.6 s partials here: turns in a
    conversation are short, and a window that spans a speaker change is labelled by neither."""
    step_s: Seconds = 0.2
    """Hop between embedding windows."""
    affinity_keep: float = 0.2
    """Fraction of nearest neighbours kept per affinity row."""
    same_voice_similarity: float = 0.92
    """Cluster centroids more cosine-similar than this are one voice. Calibration: real distinct
    voices 0.58-0.89 (the telephone call: 0.89), halves of one voice 0.90-0.96 (and below 0.9 when
    the language or channel changes, which min_speaker_changes catches)."""
    min_speaker_changes: int = 2
    """Fewer speaker changes than this: one voice drifting."""
    min_speaker_s: Seconds = 2.0
    """A voice labelled on less speech than this is folded into the others (and with two, the
    recording is refused): a second "speaker" of 1-1.5 s in a 3 s clip is one voice split."""
    min_brief_speaker_s: Seconds = 1.0
    """A voice with less than min_speaker_s but at least this much speech is kept when it is
    clearly different (distinct_voice_similarity): a quiet or brief second speaker."""
    distinct_voice_similarity: float = 0.80
    """Below this raw-centroid cosine similarity a brief voice is a different person. Measured:
    the brief second clusters that a forced split of one voice gives were 0.82-0.90 alike to
    the main one (14 real single-speaker clips); a real 1.5 s second voice was 0.50-0.52."""
    brief_voice_similarity: float = 0.70
    """A speech region of at least min_brief_speaker_s whose embedding (the mean of its windows'
    d-vectors, as Resemblyzer embeds an utterance) is less alike than this to the rest of the
    recording's speech is another person's, even when the window clustering saw one voice: 1 s
    of a second voice is one embedding window, too few to form a cluster. Measured on real
    readers: 1.0 s of a second voice, at 0 and -15 dB, was 0.48-0.63 alike to the rest; regions
    of one voice were 0.78 or more (7 single-voice clips, an English -> German change of language
    included)."""
    new_speaker_similarity: float = 0.83
    """Estimating the count (no num_speakers hint): one more cluster is one more speaker only if it
    is less alike than this to every other. Stricter than same_voice_similarity because a third
    cluster of two voices is often a channel or language change of one of them."""
    min_turn_s: Seconds = 0.3
    """Shorter label runs inside a speech region are absorbed."""
    max_gap_s: Seconds = 0.5
    """Same-speaker segments closer than this are joined: VAD splits a sentence at its commas
    (pauses of 0.1-0.4 s) while turns, and diarization references, run through them. 0.5 s is longer
    than those pauses and shorter than the gaps between turns that matter."""
    margin_scale: float = 0.5
    """Centroid-similarity margin that counts as full confidence."""
    default_max_speakers: int = 8
    """Upper bound of the estimate when the hints give none."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"OfflineDiarizerConfig.{field.name} must be finite and >= 0, got {value}"
                )
        if not 0 < self.step_s <= self.window_s:
            raise ConfigError(
                f"step_s must be in (0, window_s={self.window_s}], got {self.step_s}: "
                "consecutive windows must touch or overlap so every speech frame is covered"
            )
        if not 0 < self.affinity_keep <= 1:
            raise ConfigError(f"affinity_keep must be in (0, 1], got {self.affinity_keep}")
        for name in (
            "same_voice_similarity",
            "new_speaker_similarity",
            "distinct_voice_similarity",
        ):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.margin_scale == 0:
            raise ConfigError("margin_scale must be > 0")
        if self.default_max_speakers < 1:
            raise ConfigError("default_max_speakers must be >= 1")


# ---------------------------------------------------------------------- speaker encoder


def mel_filterbank(
    rate_hz: int = SAMPLE_RATE_HZ, n_fft: int = _N_FFT, n_mels: int = _N_MELS
) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, Slaney-normalized: librosa.filters.mel with
    its defaults (fmin 0, fmax rate / 2, htk=False, norm="slaney"), from torchaudio.

    torchaudio builds the filters in torch's default dtype. Built in float32, ~5% of the weights
    move by up to 2e-8 from the float64 construction rounded once to float32, which is what the
    offline diarizer's labels (and so the demo's shards) were made with; on the real test call that
    moves segment confidences by up to 3e-7. So the default dtype is float64 while this tiny
    (40x201) matrix is built, then the result is rounded once. The switch is process-wide for
    those microseconds; the diarize step builds its backend inside a single-threaded actor call.
    """
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        filters = melscale_fbanks(
            n_fft // 2 + 1, 0.0, rate_hz / 2, n_mels, rate_hz, norm="slaney", mel_scale="slaney"
        )
    finally:
        torch.set_default_dtype(default_dtype)
    return filters.T.numpy().astype(np.float32)


def _resemblyzer_weights() -> Path:
    """Pretrained.pt inside the resemblyzer wheel, located without importing the package."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("resemblyzer is not installed: pip install 'resemblyzer>=0.1.4'")
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.is_file():
        raise RuntimeError(f"resemblyzer's pretrained weights are missing: {path}")
    return path


class _SpeakerEncoder(nn.Module):
    """Resemblyzer's VoiceEncoder: windows of linear-power mel frames -> unit d-vectors.

    Dimension legend: N windows, T mel frames (10 ms each), M mel bands (40), E embedding (256).
    """

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.lstm = nn.LSTM(_N_MELS, _HIDDEN, _LAYERS, batch_first=True)
        self.linear = nn.Linear(_HIDDEN, _HIDDEN)
        checkpoint = torch.load(_resemblyzer_weights(), map_location="cpu", weights_only=True)
        # The checkpoint also holds the GE2E loss's similarity scale and bias: not needed here.
        state = {
            name: tensor
            for name, tensor in checkpoint["model_state"].items()
            if name.startswith(("lstm.", "linear."))
        }
        self.load_state_dict(state)
        self.register_buffer("mel_basis", torch.from_numpy(mel_filterbank()))
        self.register_buffer("window", torch.hann_window(_N_FFT))
        self.device = device
        self.to(device).eval().requires_grad_(False)

    def mel(self, wave: np.ndarray) -> Tensor:
        """(samples,) -> (T, M) frames, frame t centred on sample t * 160, T = 1 + samples // 160
        (librosa.feature.melspectrogram with center=True, reflect padding as in Resemblyzer's
        day). Computed in chunks of frames so memory stays flat on long recordings."""
        padded = np.pad(
            wave, _N_FFT // 2, mode="reflect" if wave.size > _N_FFT // 2 else "constant"
        )
        signal = torch.from_numpy(padded).to(self.device)
        n_frames = 1 + wave.size // _HOP
        chunks = []
        for first in range(0, n_frames, _MEL_CHUNK_FRAMES):
            count = min(_MEL_CHUNK_FRAMES, n_frames - first)
            span = signal[first * _HOP : (first + count - 1) * _HOP + _N_FFT]
            spec = torch.stft(
                span, _N_FFT, _HOP, window=self.window, center=False, return_complex=True
            )
            power = spec.real.square() + spec.imag.square()  # (F, T)
            chunks.append((self.mel_basis @ power).T)
        return torch.cat(chunks)

    def embed(self, windows: list[Tensor]) -> np.ndarray:
        """Windows of (T_n, M) frames, any lengths >= 1 -> (N, E) float64 unit d-vectors."""
        out = []
        for first in range(0, len(windows), _EMBED_BATCH):
            batch = windows[first : first + _EMBED_BATCH]
            _, (hidden, _) = self.lstm(pack_sequence(batch, enforce_sorted=False))
            raw = torch.relu(self.linear(hidden[-1]))
            out.append(raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12))
        return torch.cat(out).cpu().numpy().astype(np.float64)


# ---------------------------------------------------------------------- the backend


@dataclass(frozen=True)
class _Windows:
    """Embedding windows over one recording's mel frames; window i covers [starts[i], stops[i])
    and lies inside speech region region[i]."""

    starts: np.ndarray
    stops: np.ndarray
    region: np.ndarray


class OfflineDiarizer:
    """VAD + Resemblyzer d-vectors + spectral clustering. Load once, call per recording.

    Callable as `(audio, hints) -> list[SpeakerSegment]`: audio float32 (channels, samples) at
    16 kHz; speakers "spk0", "spk1", ... numbered by first appearance, all on channel 0.
    Raises DiarizationRejected("no_speech" | "single_speaker" | "indistinct_speakers", detail):
    the last when the hints ask for more voices (min_speakers, num_speakers) than can be told
    apart, e.g. a meeting whose speakers all sound alike to the embedding.
    """

    def __init__(
        self, config: OfflineDiarizerConfig | None = None, device: str | None = None
    ) -> None:
        self.config = config or OfflineDiarizerConfig()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self._vad = BatchedSileroVad()
        self._encoder = _SpeakerEncoder(self.device)

    @classmethod
    def from_config(cls, config: OfflineDiarizerConfig) -> OfflineDiarizer:
        return cls(config)

    def __call__(
        self, audio: np.ndarray, hints: SpeakerHints | None = None
    ) -> list[SpeakerSegment]:
        hints = hints or SpeakerHints()
        low, high = _count_bounds(hints, self.config.default_max_speakers)
        mono = _mono(audio)
        regions = self._speech_regions(mono)
        if not regions:
            raise DiarizationRejected("no_speech", "VAD found no speech")
        with torch.inference_mode():
            mels = self._encoder.mel(_normalize(mono, regions))
            region_frames = _region_frames(regions, mels.shape[0])
            windows = self._windows(region_frames)
            embeddings = self._encoder.embed(
                [mels[a:b] for a, b in zip(windows.starts, windows.stops, strict=True)]
            )
        reliable = self._reliable(windows)
        if high == 1:
            return self._one_speaker(embeddings, region_frames)
        try:
            return self._several(embeddings, reliable, windows, region_frames, low, high)
        except DiarizationRejected as refused:
            if refused.reason != "single_speaker" or low > 2:
                raise
            segments = self._brief_voice(embeddings, windows, region_frames)
            if not segments:
                raise
            return segments

    def _several(
        self,
        embeddings: np.ndarray,
        reliable: np.ndarray,
        windows: _Windows,
        region_frames: list[tuple[int, int]],
        low: int,
        high: int,
    ) -> list[SpeakerSegment]:
        """Steps 3-5 of the module docstring: cluster the windows, label the frames."""
        if len(reliable) < 2 * _MIN_CLUSTER_SIZE:
            raise DiarizationRejected(
                "single_speaker",
                f"{len(reliable)} embedding window(s) of speech: too little to find two voices",
            )
        centre, centroids, voices = self._cluster(embeddings[reliable], low, high)
        if len(centroids) < 2:
            raise DiarizationRejected(
                "single_speaker",
                f"one voice: its speaker clusters are more than "
                f"{self.config.same_voice_similarity:.2f} cosine-similar",
            )
        if len(centroids) < low:
            raise DiarizationRejected(
                ReasonCode.INDISTINCT_SPEAKERS.value,
                f"the hints ask for at least {low} speakers but only {len(centroids)} voices are "
                f"distinct: split {low} ways, some clusters were more than "
                f"{self.config.same_voice_similarity:.2f} cosine-similar (one voice) and merged; "
                f"the closest distinct pair is {_closest_pair(voices):.2f} alike",
            )
        segments = self._label(embeddings, centre, centroids, voices, windows, region_frames, low)
        changes = _speaker_changes(segments)
        if changes < self.config.min_speaker_changes:
            raise DiarizationRejected(
                "single_speaker",
                f"{len(centroids)} voice clusters but {changes} speaker change(s): "
                "one voice whose language or channel changes splits like this",
            )
        return segments

    # ------------------------------------------------------------------ stages

    def _speech_regions(self, mono: np.ndarray) -> list[tuple[Seconds, Seconds]]:
        (probs,) = self._vad.speech_probs(level_normalized([mono]))
        regions = speech_timestamps(
            probs,
            mono.shape[0],
            threshold=self.config.vad_threshold,
            min_silence_duration_ms=self.config.vad_min_silence_ms,
            time_resolution=3,
        )
        return [(a, b) for a, b in regions if b > a]

    def _windows(self, region_frames: list[tuple[int, int]]) -> _Windows:
        size = max(1, round(self.config.window_s / FRAME_S))
        step = max(1, round(self.config.step_s / FRAME_S))
        starts, stops, owner = [], [], []
        for index, (first, stop) in enumerate(region_frames):
            if stop - first <= size:
                positions = [first]
            else:  # regular hops, plus one window flush with the region's end
                positions = [*range(first, stop - size, step), stop - size]
            for position in positions:
                starts.append(position)
                stops.append(min(position + size, stop))
                owner.append(index)
        return _Windows(np.array(starts), np.array(stops), np.array(owner))

    def _reliable(self, windows: _Windows) -> np.ndarray:
        """Full-length windows, thinned so at most _MAX_CLUSTER_WINDOWS are clustered; all
        windows when there are too few full-length ones (short recordings)."""
        size = max(1, round(self.config.window_s / FRAME_S))
        full = np.flatnonzero(windows.stops - windows.starts >= size)
        if len(full) < 2 * _MIN_CLUSTER_SIZE:
            full = np.arange(len(windows.starts))
        stride = math.ceil(len(full) / _MAX_CLUSTER_WINDOWS)
        return full[::stride]

    def _cluster(
        self, points: np.ndarray, low: int, high: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (centre (E,), centroids (K, E) unit, in mean-subtracted space, voices (K, E): the
        same clusters' unit mean raw d-vectors, which the similarity thresholds are in); K may
        be 1."""
        centre = points.mean(0)
        centred = _unit(points - centre)
        labels = cluster_speakers(points, low, high, self.config)
        groups = np.unique(labels)
        centroids = _unit(np.stack([centred[labels == k].mean(0) for k in groups]))
        voices = _unit(np.stack([points[labels == k].mean(0) for k in groups]))
        return centre, centroids, voices

    def _label(
        self,
        embeddings: np.ndarray,
        centre: np.ndarray,
        centroids: np.ndarray,
        voices: np.ndarray,
        windows: _Windows,
        region_frames: list[tuple[int, int]],
        low: int,
    ) -> list[SpeakerSegment]:
        """Segments from >= 2 centroids, dropping the centroid of any voice labelled on less
        than min_speaker_s of speech (a refusal when only one would be left), unless that voice
        has at least min_brief_speaker_s and is a clearly different voice (its raw mean
        d-vector less than distinct_voice_similarity alike to every other): a quiet or brief
        second speaker is kept, a fragment of one voice is not."""
        while True:
            segments, names = self._segments(embeddings, centre, centroids, windows, region_frames)
            speech = dict.fromkeys(names.values(), 0.0)
            for segment in segments:
                speech[segment.speaker] += segment.duration_s
            totals = [speech.get(names.get(k, ""), 0.0) for k in range(len(centroids))]
            weakest = int(np.argmin(totals))
            if totals[weakest] >= self.config.min_speaker_s:
                return segments
            others = np.delete(voices, weakest, axis=0) @ voices[weakest]
            if (
                totals[weakest] >= self.config.min_brief_speaker_s
                and float(others.max()) < self.config.distinct_voice_similarity
            ):
                return segments
            if len(centroids) == 2:
                raise DiarizationRejected(
                    "single_speaker",
                    f"a second voice is heard for {totals[weakest]:.1f} s only "
                    f"(< min_speaker_s = {self.config.min_speaker_s} s)",
                )
            if len(centroids) <= low:
                raise DiarizationRejected(
                    ReasonCode.INDISTINCT_SPEAKERS.value,
                    f"the hints ask for at least {low} speakers but one of the {len(centroids)} "
                    f"voices is heard for {totals[weakest]:.1f} s only (< min_speaker_s = "
                    f"{self.config.min_speaker_s} s) and is not clearly a different voice",
                )
            centroids = np.delete(centroids, weakest, axis=0)
            voices = np.delete(voices, weakest, axis=0)

    def _segments(
        self,
        embeddings: np.ndarray,
        centre: np.ndarray,
        centroids: np.ndarray,
        windows: _Windows,
        region_frames: list[tuple[int, int]],
    ) -> tuple[list[SpeakerSegment], dict[int, str]]:
        """Segments, and the speaker name of each centroid index that labels any speech."""
        config = self.config
        sims = _unit(embeddings - centre) @ centroids.T  # (N, K)
        min_run = round(config.min_turn_s / FRAME_S)
        pieces: list[tuple[int, int, int, float]] = []  # (label, first, stop, confidence)
        for index, (first, stop) in enumerate(region_frames):
            score = np.zeros((stop - first, len(centroids)))
            cover = np.zeros(stop - first)
            for w in np.flatnonzero(windows.region == index):
                a, b = windows.starts[w] - first, windows.stops[w] - first
                score[a:b] += sims[w]
                cover[a:b] += 1
            score /= np.maximum(cover, 1)[:, None]
            labels = _absorb_short_runs(score.argmax(1), score, min_run)
            confidence = _margin_confidence(score, labels, config.margin_scale)
            for label, a, b in _runs(labels):
                pieces.append((label, first + a, first + b, float(confidence[a:b].mean())))
        names: dict[int, str] = {}
        for label, *_ in pieces:  # pieces are in time order: number speakers as they appear
            names.setdefault(label, f"spk{len(names)}")
        segments = [
            SpeakerSegment(names[label], 0, _seconds(a), _seconds(b), confidence)
            for label, a, b, confidence in pieces
        ]
        return merge_close(segments, config.max_gap_s), names

    def _brief_voice(
        self, embeddings: np.ndarray, windows: _Windows, region_frames: list[tuple[int, int]]
    ) -> list[SpeakerSegment]:
        """The refusal's second look (see brief_voice_similarity), from the window embeddings
        already computed: each region of at least min_brief_speaker_s, as the mean of its
        windows, is compared with the duration-weighted mean of every other region. Regions
        less alike than brief_voice_similarity are the second voice (of two regions unlike each
        other, the less typical one); shorter regions then go to the nearer of the two voices.
        Returns [] when there are none. The speaker-change count is not asked for: one brief
        turn at the very end of a call is one change, and such a voice is far more distinct
        than a drifting one."""
        config = self.config
        if len(region_frames) < 2:
            return []
        sums = np.zeros((len(region_frames), embeddings.shape[1]))
        np.add.at(sums, windows.region, _unit(np.asarray(embeddings)))  # one pass over windows
        regions = _unit(sums)  # the unit mean of each region's windows
        frames = np.array([b - a for a, b in region_frames], dtype=np.float64)
        weighted = regions * frames[:, None]
        rest = _unit(weighted.sum(0) - weighted)  # row i: every region but i, by duration
        sims = np.einsum("ij,ij->i", regions, rest)
        long_enough = frames * FRAME_S >= config.min_brief_speaker_s
        brief = long_enough & (sims < config.brief_voice_similarity)
        if brief.all():  # two regions, each unlike the other: the more typical one is the main
            brief[int(np.argmax(sims))] = False
        if not brief.any():
            return []
        main = _unit((regions[~brief] * frames[~brief, None]).sum(0))
        other = _unit((regions[brief] * frames[brief, None]).sum(0))
        # Regions too short to judge alone go to whichever voice they are nearer.
        brief |= ~long_enough & (regions @ other > regions @ main)
        first_is_brief = bool(brief[0])
        segments = []
        for index, (a, b) in enumerate(region_frames):
            own, rival = (other, main) if brief[index] else (main, other)
            margin = float(regions[index] @ own - regions[index] @ rival)
            speaker = "spk0" if bool(brief[index]) == first_is_brief else "spk1"
            confidence = float(np.clip(margin / config.margin_scale, 0.0, 1.0))
            segments.append(SpeakerSegment(speaker, 0, _seconds(a), _seconds(b), confidence))
        return merge_close(segments, config.max_gap_s)

    def _one_speaker(
        self, embeddings: np.ndarray, region_frames: list[tuple[int, int]]
    ) -> list[SpeakerSegment]:
        """All speech as spk0 (the hints said one speaker)."""
        confidence = float(np.clip((embeddings @ _unit(embeddings.mean(0))).mean(), 0.0, 1.0))
        segments = [
            SpeakerSegment("spk0", 0, _seconds(a), _seconds(b), confidence)
            for a, b in region_frames
        ]
        return merge_close(segments, self.config.max_gap_s)


# ---------------------------------------------------------------------- speaker count


def cluster_speakers(
    points: np.ndarray, low: int, high: int, config: OfflineDiarizerConfig
) -> np.ndarray:
    """Speaker label per embedding window (raw unit d-vectors, (N, E)); the count is estimated
    between `low` and `high` unless they are equal (an exact `num_speakers`).

    The points are mean-subtracted and cut by spectral clustering into k = max(low, 2) clusters;
    clusters that are one voice (raw centroids more than same_voice_similarity alike) merge, and
    what is left is the answer, possibly one voice. Otherwise every k up to `high` whose clusters
    are all clearly distinct voices (no two raw centroids more than new_speaker_similarity alike;
    the first k that fails ends the search, as a split of one voice only gets worse with k) is a
    candidate, and the count is the candidate with the best mean silhouette (cosine, in
    mean-subtracted space). Why both: the similarity bound alone takes the largest admissible k,
    which over-splits a meeting whose voices differ a lot (a voice's own two halves can then be
    0.80 alike); the silhouette alone has no notion of "one voice" and always prefers some split.
    Deterministic: the same points give the same labels.
    """
    centred = _unit(points - points.mean(0))
    high = min(high, len(points) // _MIN_CLUSTER_SIZE)
    if high < 2:
        return np.zeros(len(points), dtype=int)
    spectral = _SpectralEmbedding(centred, high, config.affinity_keep)
    first = min(max(low, 2), high)
    labels = _merge_same_voice(
        points, _drop_small(centred, spectral.labels(first)), config.same_voice_similarity
    )
    if len(np.unique(labels)) < first or first == high:
        return labels
    best, best_score = labels, silhouette(centred, labels)
    for k in range(first + 1, high + 1):
        candidate = _drop_small(centred, spectral.labels(k))
        if _most_similar_pair(points, candidate) > config.new_speaker_similarity:
            break
        candidate_score = silhouette(centred, candidate)
        if candidate_score > best_score:
            best, best_score = candidate, candidate_score
    return best


def silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of unit `points` under `labels`, cosine distance (1 - similarity); a point
    alone in its cluster scores 0; fewer than two clusters score -1."""
    groups, index = np.unique(labels, return_inverse=True)
    if len(groups) < 2:
        return -1.0
    distance = 1.0 - points @ points.T
    members = np.eye(len(groups))[index]  # (N, K) one-hot
    sizes = members.sum(0)
    totals = distance @ members  # (N, K): summed distance to each cluster
    own_size = sizes[index] - 1
    own = totals[np.arange(len(points)), index] / np.maximum(own_size, 1)
    mean_to = totals / sizes[None, :]
    mean_to[np.arange(len(points)), index] = np.inf
    nearest = mean_to.min(1)
    score = (nearest - own) / np.maximum(np.maximum(nearest, own), 1e-12)
    score[own_size == 0] = 0.0
    return float(score.mean())


def _closest_pair(voices: np.ndarray) -> float:
    """Highest cosine similarity between two of the unit rows of `voices` (K >= 2)."""
    sims = voices @ voices.T
    np.fill_diagonal(sims, -np.inf)
    return float(sims.max())


def _most_similar_pair(points: np.ndarray, labels: np.ndarray) -> float:
    """Highest cosine similarity between two clusters' mean raw d-vectors (-1 if < 2)."""
    groups = np.unique(labels)
    if len(groups) < 2:
        return -1.0
    means = _unit(np.stack([points[labels == k].mean(0) for k in groups]))
    sims = means @ means.T
    np.fill_diagonal(sims, -np.inf)
    return float(sims.max())


def _merge_same_voice(points: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Merge the most similar pair of clusters (raw mean d-vectors) while it is above
    `threshold` (same_voice_similarity): a forced split of one voice gives such a pair."""
    labels = labels.copy()
    while len(np.unique(labels)) > 1:
        groups = np.unique(labels)
        means = _unit(np.stack([points[labels == k].mean(0) for k in groups]))
        sims = means @ means.T
        np.fill_diagonal(sims, -np.inf)
        i, j = np.unravel_index(np.argmax(sims), sims.shape)
        if sims[i, j] <= threshold:
            break
        labels[labels == groups[j]] = groups[i]
    return labels


# ---------------------------------------------------------------------- helpers


def _seconds(frame: int) -> Seconds:
    """Frame index -> seconds, rounded to the millisecond (no 27.990000000000002)."""
    return round(frame * FRAME_S, 3)


def _mono(audio: np.ndarray) -> np.ndarray:
    array = np.asarray(audio, dtype=np.float32)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[0] < 1:
        raise ValueError(f"audio must be (channels, samples), got shape {array.shape}")
    return np.ascontiguousarray(array.mean(0, dtype=np.float32))


def _normalize(mono: np.ndarray, regions: list[tuple[Seconds, Seconds]]) -> np.ndarray:
    """Scale to -30 dBFS RMS over the speech: Resemblyzer's mel is linear power, so the input
    level moves the embedding, and its training inputs were brought to this level."""
    speech = np.concatenate(
        [mono[round(a * SAMPLE_RATE_HZ) : round(b * SAMPLE_RATE_HZ)] for a, b in regions]
    )
    rms = float(np.sqrt(np.mean(np.square(speech, dtype=np.float64)))) if speech.size else 0.0
    if rms <= 0:
        return mono
    return (mono * (10 ** (_TARGET_DBFS / 20) / rms)).astype(np.float32)


def _region_frames(regions: list[tuple[Seconds, Seconds]], n_frames: int) -> list[tuple[int, int]]:
    frames = []
    for a, b in regions:
        first, stop = round(a / FRAME_S), min(round(b / FRAME_S), n_frames)
        if stop > first:
            frames.append((first, stop))
    return frames


def _count_bounds(hints: SpeakerHints, default_max: int) -> tuple[int, int]:
    """(low, high) speaker counts allowed by the hints."""
    if hints.num_speakers is not None:
        if hints.num_speakers < 1:
            raise ValueError(f"num_speakers must be >= 1, got {hints.num_speakers}")
        return hints.num_speakers, hints.num_speakers
    low = max(hints.min_speakers or 1, 1)
    high = hints.max_speakers if hints.max_speakers is not None else max(default_max, low)
    if high < low:
        raise ValueError(f"max_speakers ({high}) is below min_speakers ({low})")
    return low, high


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class _SpectralEmbedding:
    """Spectral embedding of unit vectors, computed once and cut into k clusters for any k.

    Affinity: cosine similarity, each row keeping its ceil(keep * N) most similar points (and
    only positive values), then symmetrized; the first `high` eigenvectors of the normalized
    Laplacian, rows normalized, are clustered by deterministic k-means.
    """

    def __init__(self, points: np.ndarray, high: int, keep: float) -> None:
        from scipy.linalg import eigh

        n = len(points)
        sims = points @ points.T
        neighbours = min(n, max(2, math.ceil(keep * n)))
        nearest = np.argsort(-sims, axis=1, kind="stable")[:, :neighbours]
        rows = np.repeat(np.arange(n), neighbours)
        affinity = np.zeros_like(sims)
        affinity[rows, nearest.ravel()] = np.maximum(sims[rows, nearest.ravel()], 0.0)
        affinity = (affinity + affinity.T) / 2
        np.fill_diagonal(affinity, 0.0)
        scale = 1 / np.sqrt(np.maximum(affinity.sum(1), 1e-12))
        laplacian = np.eye(n) - scale[:, None] * affinity * scale[None, :]
        _, self.vectors = eigh(laplacian, subset_by_index=[0, min(high, n) - 1])

    def labels(self, k: int) -> np.ndarray:
        return _kmeans(_unit(self.vectors[:, :k]), k)


def _kmeans(x: np.ndarray, k: int, iterations: int = 100) -> np.ndarray:
    """Euclidean k-means, seeded by farthest-point traversal from the point farthest from the
    mean (no randomness: the same input gives the same labels)."""
    seeds = [int(np.argmax(((x - x.mean(0)) ** 2).sum(1)))]
    nearest = ((x - x[seeds[0]]) ** 2).sum(1)
    while len(seeds) < k:
        seeds.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, ((x - x[seeds[-1]]) ** 2).sum(1))
    centres = x[seeds].copy()
    labels = np.zeros(len(x), dtype=int)
    for _ in range(iterations):
        labels = ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        updated = np.stack(
            [x[labels == j].mean(0) if np.any(labels == j) else centres[j] for j in range(k)]
        )
        if np.allclose(updated, centres):
            break
        centres = updated
    return labels


def _drop_small(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Give the windows of clusters smaller than _MIN_CLUSTER_SIZE to the nearest big cluster."""
    groups, sizes = np.unique(labels, return_counts=True)
    big = groups[sizes >= _MIN_CLUSTER_SIZE]
    if len(big) in (0, len(groups)):
        return labels
    means = _unit(np.stack([points[labels == k].mean(0) for k in big]))
    small = ~np.isin(labels, big)
    labels = labels.copy()
    labels[small] = big[(points[small] @ means.T).argmax(1)]
    return labels


def _runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(label, first, stop) of each run of equal labels."""
    edges = np.flatnonzero(np.diff(labels)) + 1
    bounds = np.concatenate([[0], edges, [len(labels)]])
    return [(int(labels[a]), int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _absorb_short_runs(labels: np.ndarray, score: np.ndarray, min_run: int) -> np.ndarray:
    """Relabel the shortest run, while shorter than min_run, to the neighbouring run's label
    that scores better over it; a region that is one short run keeps its label."""
    labels = labels.copy()
    while True:
        runs = _runs(labels)
        if len(runs) < 2:
            return labels
        shortest = min(range(len(runs)), key=lambda i: runs[i][2] - runs[i][1])
        _, a, b = runs[shortest]
        if b - a >= min_run:
            return labels
        neighbours = [runs[i][0] for i in (shortest - 1, shortest + 1) if 0 <= i < len(runs)]
        labels[a:b] = max(neighbours, key=lambda k: score[a:b, k].sum())


def _margin_confidence(score: np.ndarray, labels: np.ndarray, margin_scale: float) -> np.ndarray:
    """Per frame: (own similarity - best other similarity) / margin_scale, clipped to [0, 1]."""
    rows = np.arange(len(labels))
    own = score[rows, labels]
    others = score.copy()
    others[rows, labels] = -np.inf
    return np.clip((own - others.max(1)) / margin_scale, 0.0, 1.0)


def _speaker_changes(segments: list[SpeakerSegment]) -> int:
    ordered = sorted(segments, key=lambda s: (s.start_s, s.speaker))
    return sum(a.speaker != b.speaker for a, b in pairwise(ordered))
