"""The `pyannote` diarization backend: a pyannote.audio 4 speaker-diarization pipeline, offline.

Owns loading a pipeline from local files only (a directory holding `config.yaml`, that file
itself, or a HuggingFace repo id already in the local HF cache), running it on one in-memory
waveform, and mapping its output to `SpeakerSegment`s. It must not make network calls
(downloads, pyannote's telemetry), read or write audio files, or need FFmpeg: the pipeline gets
`{"waveform", "sample_rate"}` in memory.

    diarize = PyannoteDiarizer("pyannote/speaker-diarization-community-1")  # from the HF cache
    segments = diarize(audio, SpeakerHints(min_speakers=2))  # audio: (channels, samples), 16 kHz

To put community-1 in the cache (on a machine with access, after accepting its conditions on
hf.co): `hf download pyannote/speaker-diarization-community-1`, or pass the `--local-dir` folder.

Segments come from pyannote's overlap-aware annotation (`speaker_diarization`, not the
`exclusive_...` one), so overlapping speech stays as overlapping segments of different speakers.
Speakers are renamed "spk0", "spk1", ... in order of first appearance; channel is always 0.

Confidence: pyannote gives no per-segment score, so this backend derives one from the
segmentation model's own frame posteriors, recorded while the pipeline runs (no second pass):
per frame, the probability the model gave to the speaker configuration it chose (powerset
models; for multi-label models the mean of max(p, 1 - p) over local speakers), averaged over
the overlapping chunks and then over the segment's frames. It says how sure the model is about
who is active locally, not how sure the clustering is about which global speaker it is. It is
1.0 when the pipeline exposes no segmentation scores (a pipeline class other than pyannote's
`SpeakerDiarization`).

One instance holds one pipeline and is not thread-safe; use one per worker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from minmo.diarization.types import DiarizationRejected, SpeakerHints, SpeakerSegment
from schemas.units import SAMPLE_RATE_HZ

CONFIG_NAME = "config.yaml"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Mean certainty of a segment's frames, given (start_s, end_s).
SegmentConfidence = Callable[[float, float], float]


class PyannoteDiarizer:
    """Load a pyannote diarization pipeline once; call it on (channels, samples) 16 kHz audio.

    `model`: a directory holding the pipeline's `config.yaml`, a `config.yaml` path, or a
    HuggingFace repo id (e.g. `pyannote/speaker-diarization-community-1`) looked up in the local
    HF cache only (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    `device`: torch device name; defaults to "cuda" when available, else "cpu".
    """

    def __init__(self, model: str, device: str | None = None) -> None:
        # pyannote's telemetry is on by default and posts to otel.pyannote.ai on every call;
        # this backend makes no network calls. Forced, not setdefault: importing pyannote.audio
        # sets the variable to "true" when unset, so an existing value may not be the user's.
        os.environ["PYANNOTE_METRICS_ENABLED"] = "false"
        import torch

        config, cache_dir = resolve_pipeline_config(model)
        self.config_path = config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

        # Heavy (seconds, lightning and friends) and only for this backend: imported on use, so
        # registering it costs nothing to runs that diarize with `channels` or `offline`.
        from pyannote.audio import Pipeline

        with _hub_offline():
            pipeline = Pipeline.from_pretrained(config, cache_dir=cache_dir)
        if pipeline is None:  # pyannote returns None instead of raising on some hub failures
            raise FileNotFoundError(f"pyannote could not load the pipeline at {config}")
        self._pipeline = pipeline.to(self.device)
        self._tap = _ScoreTap.install(self._pipeline)

    def __call__(self, audio: np.ndarray, hints: SpeakerHints) -> list[SpeakerSegment]:
        import torch

        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[None]
        if audio.ndim != 2:
            raise ValueError(f"audio must be (channels, samples), got shape {audio.shape}")
        if audio.shape[1] == 0:
            raise DiarizationRejected("no_speech", "empty audio")
        mono = audio.mean(axis=0, keepdims=True) if audio.shape[0] > 1 else audio
        file = {
            "waveform": torch.from_numpy(np.ascontiguousarray(mono)),
            "sample_rate": SAMPLE_RATE_HZ,
        }

        chunks: list[Any] = []

        def hook(step: str, artefact: Any, **_: Any) -> None:
            if step == "segmentation" and artefact is not None:
                chunks.append(artefact.sliding_window)

        if self._tap is not None:
            self._tap.reset()
        output = self._pipeline(file, hook=hook, **_hint_kwargs(hints))
        annotation = getattr(output, "speaker_diarization", output)  # legacy pipelines: Annotation

        confidence = None
        if self._tap is not None and chunks:
            confidence = self._tap.segment_confidence(
                chunks[-1], self._pipeline._segmentation.model.receptive_field
            )
        segments = segments_from_annotation(annotation, confidence, audio.shape[1] / SAMPLE_RATE_HZ)
        speakers = {seg.speaker for seg in segments}
        if not speakers:
            raise DiarizationRejected("no_speech", "pyannote found no speech")
        if len(speakers) == 1:
            raise DiarizationRejected("single_speaker", "pyannote found one speaker")
        return segments


def resolve_pipeline_config(model: str | Path) -> tuple[Path, Path | None]:
    """`model` -> (config.yaml path, HF cache dir it came from or None); never downloads.

    Raises FileNotFoundError saying what was looked for and how to provide it.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        config = path / CONFIG_NAME
        if not config.is_file():
            raise FileNotFoundError(
                f"pyannote pipeline directory {path} has no {CONFIG_NAME}; pass the folder of a "
                f"downloaded pipeline (the one holding {CONFIG_NAME} and its model subfolders)"
            )
        return config, None
    if path.is_file():
        return path, None
    if not _REPO_ID.match(str(model)):
        raise FileNotFoundError(
            f"pyannote pipeline not found: {model!r} is not an existing directory holding "
            f"{CONFIG_NAME}, nor a {CONFIG_NAME} file, nor a HuggingFace repo id (org/name)"
        )

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    cache_dir = hf_hub_cache_dir()
    how = (
        f"this backend never downloads. On a machine with access to hf.co (after accepting the "
        f"model's conditions there): `hf download {model}` with HF_HUB_CACHE (or HF_HOME) "
        f"pointing at this cache, or download it with --local-dir DIR and pass DIR instead"
    )
    try:
        snapshot = Path(snapshot_download(str(model), cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError) as e:
        raise FileNotFoundError(
            f"no local path {str(model)!r} and repo {model!r} is not in the local HuggingFace "
            f"cache {cache_dir}; {how}"
        ) from e
    config = snapshot / CONFIG_NAME
    if not config.is_file():
        raise FileNotFoundError(
            f"repo {model!r} is in the HuggingFace cache {cache_dir} but its snapshot "
            f"{snapshot} has no {CONFIG_NAME} (incomplete download?); {how}"
        )
    return config, cache_dir


def hf_hub_cache_dir() -> Path:
    """The HF hub cache, from the environment as it is now.

    Why not `huggingface_hub.constants.HF_HUB_CACHE`: that is frozen when huggingface_hub is
    first imported (pyannote imports it), so later changes to HF_HOME/HF_HUB_CACHE would be
    ignored. Precedence mirrors huggingface_hub's.
    """
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface",
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def segments_from_annotation(
    annotation: Any,
    confidence: SegmentConfidence | None = None,
    duration_s: float | None = None,
) -> list[SpeakerSegment]:
    """pyannote `Annotation` -> segments sorted by start, speakers renamed by first appearance.

    Overlapping tracks stay separate segments. `confidence(start_s, end_s)` scores each segment;
    without it every segment gets 1.0. With `duration_s`, segments are clipped to the audio and
    those wholly past its end dropped: pyannote 4.0.7 zero-pads the last 10 s chunk and does not
    crop its output, so turns can run past the end of short or odd-length audio.
    """
    names: dict[Any, str] = {}
    segments = []
    # itertracks yields segments in (start, end) order, so the first time a label is seen is
    # its first appearance; ties at the same start follow pyannote's track order.
    for turn, _, label in annotation.itertracks(yield_label=True):
        start_s, end_s = float(turn.start), float(turn.end)
        if duration_s is not None:
            start_s, end_s = max(start_s, 0.0), min(end_s, duration_s)
            if end_s <= start_s:
                continue
        speaker = names.setdefault(label, f"spk{len(names)}")
        score = 1.0 if confidence is None else confidence(start_s, end_s)
        segments.append(SpeakerSegment(speaker, 0, start_s, end_s, float(score)))
    return segments


def _hint_kwargs(hints: SpeakerHints) -> dict[str, int]:
    kwargs = {
        "num_speakers": hints.num_speakers,
        "min_speakers": hints.min_speakers,
        "max_speakers": hints.max_speakers,
    }
    return {k: v for k, v in kwargs.items() if v is not None}


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Make any HF hub request pyannote attempts while loading fail instead of going out.

    A `$model/...` config (community-1) loads from the snapshot's own subfolders and makes none;
    a config naming other repos (3.1-style) then resolves them from the cache or fails.
    """
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


class _ScoreTap:
    """Stands in for the segmentation Inference's `conversion` (powerset -> multi-label) and
    records each batch's per-frame certainty on the way, so confidence costs no second pass."""

    def __init__(self, inner: Any, powerset: bool) -> None:
        self.inner = inner
        self.powerset = powerset
        self.batches: list[np.ndarray] = []

    @classmethod
    def install(cls, pipeline: Any) -> _ScoreTap | None:
        inference = getattr(pipeline, "_segmentation", None)
        if inference is None or not hasattr(inference, "conversion"):
            return None
        specs = inference.model.specifications
        if isinstance(specs, tuple):  # multi-task segmentation: no single score to read
            return None
        tap = cls(inference.conversion, bool(specs.powerset))
        inference.conversion = tap
        return tap

    def __call__(self, output: Any) -> Any:
        import torch

        with torch.inference_mode():
            if self.powerset:  # log-softmax over speaker configurations
                certainty = output.max(dim=-1).values.exp()
            else:  # independent sigmoids per local speaker
                certainty = torch.maximum(output, 1 - output).mean(dim=-1)
        self.batches.append(certainty.float().cpu().numpy())
        return self.inner(output)

    def to(self, device: Any) -> _ScoreTap:
        self.inner.to(device)
        return self

    def reset(self) -> None:
        self.batches.clear()

    def segment_confidence(self, chunks: Any, frames: Any) -> SegmentConfidence | None:
        """Per-segment mean certainty; `chunks`/`frames` are pyannote SlidingWindows (chunk
        positions in the file, frame positions within a chunk)."""
        if not self.batches:
            return None
        scores = np.concatenate(self.batches)  # (chunk, frame)
        num_chunks, num_frames = scores.shape
        chunk_start = chunks.start + chunks.step * np.arange(num_chunks)
        frame_mid = frames.start + frames.duration / 2 + frames.step * np.arange(num_frames)
        times = (chunk_start[:, None] + frame_mid[None, :]).ravel()
        order = np.argsort(times, kind="stable")
        times = times[order]
        cumulative = np.concatenate([[0.0], np.cumsum(scores.ravel()[order], dtype=np.float64)])

        def confidence(start_s: float, end_s: float) -> float:
            lo, hi = np.searchsorted(times, [start_s, end_s], side="left")
            if hi <= lo:  # shorter than a frame: take the nearest frame
                lo = min(max(lo - 1, 0), len(times) - 1)
                hi = lo + 1
            return float(np.clip((cumulative[hi] - cumulative[lo]) / (hi - lo), 0.0, 1.0))

        return confidence
