"""PyannoteDiarizer on a tiny random-init pipeline built on disk, loaded like real weights.

Random weights diarize nonsense, so these tests check the plumbing, not accuracy: loading from a
directory or a (fake) HF cache, the in-memory waveform and hints reaching pyannote, the mapping
of a known Annotation to segments, refusals, and the errors for models that are not there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from minmo.diarization.pyannote_backend import (
    PyannoteDiarizer,
    _ScoreTap,
    hf_hub_cache_dir,
    resolve_pipeline_config,
    segments_from_annotation,
)
from minmo.diarization.types import DiarizationRejected, SpeakerHints, SpeakerSegment
from minmo.testing.pyannote_tiny import build_tiny_pyannote_pipeline
from schemas.units import SAMPLE_RATE_HZ

SAMPLE = Path("diar_pyannote_sample") / "sample.wav"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_pyannote_pipeline(tmp_path_factory.mktemp("tiny_pipeline"))


@pytest.fixture(scope="module")
def diarizer(tiny_dir) -> PyannoteDiarizer:
    return PyannoteDiarizer(str(tiny_dir), device="cpu")


@pytest.fixture(scope="module")
def speech(shared_data) -> np.ndarray:
    audio, rate = sf.read(shared_data / SAMPLE, dtype="float32", always_2d=True)
    assert rate == SAMPLE_RATE_HZ
    return audio.T  # (channels, samples)


def _annotation(tracks: list[tuple[float, float, str]]):
    from pyannote.core import Annotation, Segment

    annotation = Annotation(uri="hand-made")
    for start, end, label in tracks:
        annotation[Segment(start, end), annotation.new_track(Segment(start, end))] = label
    return annotation


def _fake_output(monkeypatch, diarizer: PyannoteDiarizer, annotation, calls: list) -> None:
    """Make the loaded pipeline's `apply` return `annotation`, keeping pyannote's own
    `__call__` (input validation) in front of it and recording what reached it."""
    from pyannote.audio.pipelines.speaker_diarization import DiarizeOutput

    def apply(file, **kwargs):
        calls.append((file, kwargs))
        return DiarizeOutput(speaker_diarization=annotation, exclusive_speaker_diarization=None)

    monkeypatch.setattr(diarizer._pipeline, "apply", apply)


def test_import_is_cheap():
    code = (
        "import sys, minmo.diarization.pyannote_backend, minmo.testing.pyannote_tiny\n"
        "heavy = [m for m in ('torch', 'pyannote.audio', 'huggingface_hub') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiny_pipeline_layout(tiny_dir):
    config = (tiny_dir / "config.yaml").read_text()
    assert "name: pyannote.audio.pipelines.SpeakerDiarization" in config
    for part in ("segmentation", "embedding", "plda"):
        assert f"$model/{part}" in config
    assert (tiny_dir / "segmentation" / "pytorch_model.bin").is_file()
    assert (tiny_dir / "embedding" / "pytorch_model.bin").is_file()
    assert (tiny_dir / "plda" / "xvec_transform.npz").is_file()
    assert (tiny_dir / "plda" / "plda.npz").is_file()
    total = sum(f.stat().st_size for f in tiny_dir.rglob("*") if f.is_file())
    assert total < 2_000_000


@pytest.mark.slow
def test_loads_from_directory(diarizer, tiny_dir):
    from pyannote.audio.pipelines import SpeakerDiarization

    assert isinstance(diarizer._pipeline, SpeakerDiarization)
    assert diarizer.config_path == tiny_dir / "config.yaml"
    assert str(diarizer.device) == "cpu"
    assert diarizer._pipeline._segmentation.model.specifications.powerset
    assert diarizer._pipeline._embedding.dimension == 256


@pytest.mark.slow
# random weights make pyannote's clustering warn (empty clusters, speaker count out of bounds)
@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")
def test_real_speech_reaches_pipeline_with_hints(diarizer, speech, monkeypatch):
    calls = []
    original = diarizer._pipeline.apply

    def spy(file, **kwargs):
        calls.append((file, kwargs))
        return original(file, **kwargs)

    monkeypatch.setattr(diarizer._pipeline, "apply", spy)
    stereo = np.concatenate([speech, 0.5 * speech])  # two channels: downmix must be the mean
    try:
        segments = diarizer(stereo, SpeakerHints(num_speakers=2))
    except DiarizationRejected as rejected:  # random weights may find nothing, or one speaker
        assert rejected.reason in {"no_speech", "single_speaker"}
        segments = []

    ((file, kwargs),) = calls
    waveform = file["waveform"]
    assert tuple(waveform.shape) == (1, speech.shape[1])
    assert file["sample_rate"] == SAMPLE_RATE_HZ
    np.testing.assert_allclose(waveform.numpy()[0], 0.75 * speech[0], rtol=1e-6, atol=1e-7)
    assert kwargs["num_speakers"] == 2
    assert "min_speakers" not in kwargs and "max_speakers" not in kwargs
    duration_s = speech.shape[1] / SAMPLE_RATE_HZ
    names = sorted({s.speaker for s in segments})
    assert names == [f"spk{i}" for i in range(len(names))]
    for seg in segments:
        assert seg.channel == 0
        assert 0.0 <= seg.start_s < seg.end_s <= duration_s + 0.1
        assert 0.0 <= seg.confidence <= 1.0  # from the segmentation scores, not a constant
    assert segments == sorted(segments, key=lambda s: s.start_s)


@pytest.mark.slow
def test_bounds_hints_pass_through(diarizer, monkeypatch):
    calls: list = []
    _fake_output(monkeypatch, diarizer, _annotation([(0, 1, "a"), (1, 2, "b")]), calls)
    diarizer(
        np.zeros((1, 3 * SAMPLE_RATE_HZ), np.float32), SpeakerHints(min_speakers=2, max_speakers=5)
    )
    diarizer(np.zeros((1, 3 * SAMPLE_RATE_HZ), np.float32), SpeakerHints())
    assert {k: v for k, v in calls[0][1].items() if k != "hook"} == {
        "min_speakers": 2,
        "max_speakers": 5,
    }
    assert {k: v for k, v in calls[1][1].items() if k != "hook"} == {}


@pytest.mark.slow
def test_known_annotation_maps_to_segments(diarizer, monkeypatch):
    annotation = _annotation(
        [
            (0.5, 3.0, "SPEAKER_01"),
            (2.0, 4.0, "SPEAKER_00"),
            (5.0, 6.0, "SPEAKER_01"),
            (5.5, 7.0, "X"),
        ]
    )
    _fake_output(monkeypatch, diarizer, annotation, [])
    segments = diarizer(np.zeros((2, 8 * SAMPLE_RATE_HZ), np.float32), SpeakerHints())
    assert segments == [
        SpeakerSegment("spk0", 0, 0.5, 3.0, 1.0),  # first to speak, whatever pyannote called it
        SpeakerSegment("spk1", 0, 2.0, 4.0, 1.0),  # overlaps spk0: kept, not flattened
        SpeakerSegment("spk0", 0, 5.0, 6.0, 1.0),
        SpeakerSegment("spk2", 0, 5.5, 7.0, 1.0),
    ]


@pytest.mark.slow
def test_segments_clipped_to_audio(diarizer, monkeypatch):
    # pyannote pads the last chunk and can return turns past the end of the audio
    annotation = _annotation([(0.5, 9.97, "A"), (1.0, 1.5, "B"), (3.0, 9.0, "C")])
    _fake_output(monkeypatch, diarizer, annotation, [])
    segments = diarizer(np.zeros((1, 2 * SAMPLE_RATE_HZ), np.float32), SpeakerHints())
    assert [(s.speaker, s.start_s, s.end_s) for s in segments] == [
        ("spk0", 0.5, 2.0),
        ("spk1", 1.0, 1.5),
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tracks", "reason"),
    [([], "no_speech"), ([(0.0, 1.0, "A"), (3.0, 4.0, "A")], "single_speaker")],
)
def test_refusals(diarizer, monkeypatch, tracks, reason):
    _fake_output(monkeypatch, diarizer, _annotation(tracks), [])
    with pytest.raises(DiarizationRejected) as info:
        diarizer(np.zeros((1, 5 * SAMPLE_RATE_HZ), np.float32), SpeakerHints())
    assert info.value.reason == reason


@pytest.mark.slow
def test_empty_audio_is_no_speech(diarizer):
    with pytest.raises(DiarizationRejected) as info:
        diarizer(np.zeros((1, 0), np.float32), SpeakerHints())
    assert info.value.reason == "no_speech"


def test_legacy_annotation_output_and_default_confidence():
    segments = segments_from_annotation(_annotation([(1.0, 2.0, 7), (0.0, 1.5, 3)]))
    assert [(s.speaker, s.start_s, s.confidence) for s in segments] == [
        ("spk0", 0.0, 1.0),
        ("spk1", 1.0, 1.0),
    ]


def test_confidence_is_mean_frame_certainty():
    import torch
    from pyannote.core import SlidingWindow

    tap = _ScoreTap(torch.nn.Identity(), powerset=True)
    # 2 chunks of 4 frames (0.5 s each), the second chunk starting 1 s later; the chosen class
    # has probability 0.9 in chunk 0 and 0.5 in chunk 1
    probs = torch.full((2, 4, 7), 0.02)
    probs[0, :, 0], probs[1, :, 3] = 0.9, 0.5
    out = tap(probs.log())
    torch.testing.assert_close(out, probs.log())  # the wrapped conversion still runs
    chunks = SlidingWindow(start=0.0, duration=2.0, step=1.0)
    frames = SlidingWindow(start=0.0, duration=0.5, step=0.5)
    confidence = tap.segment_confidence(chunks, frames)
    # frame centres: chunk 0 at .25 .75 1.25 1.75; chunk 1 at 1.25 1.75 2.25 2.75
    assert confidence(0.0, 1.0) == pytest.approx(0.9)
    assert confidence(1.0, 2.0) == pytest.approx(0.7)  # both chunks cover it: averaged
    assert confidence(2.0, 3.0) == pytest.approx(0.5)
    assert confidence(2.3, 2.4) == pytest.approx(0.5)  # shorter than a frame: nearest frame
    tap.reset()
    assert tap.segment_confidence(chunks, frames) is None


def test_missing_path_error(tmp_path):
    missing = tmp_path / "no_such_pipeline"
    with pytest.raises(FileNotFoundError, match="no_such_pipeline"):
        PyannoteDiarizer(str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no config\.yaml"):
        PyannoteDiarizer(str(empty))


def test_config_file_path_resolves(tiny_dir):
    assert resolve_pipeline_config(tiny_dir / "config.yaml") == (tiny_dir / "config.yaml", None)


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_repo_not_in_cache_error(tmp_path, monkeypatch, variable):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv(variable, str(tmp_path))
    expected_cache = tmp_path if variable == "HF_HUB_CACHE" else tmp_path / "hub"
    assert hf_hub_cache_dir() == expected_cache
    with pytest.raises(FileNotFoundError) as info:
        PyannoteDiarizer("pyannote/speaker-diarization-community-1")
    message = str(info.value)
    assert "pyannote/speaker-diarization-community-1" in message
    assert str(expected_cache) in message
    assert "hf download" in message and "never downloads" in message
    with pytest.raises(FileNotFoundError, match="not in the local HuggingFace cache"):
        PyannoteDiarizer("org/bad..name")  # not even a valid repo id


def _fake_hf_cache(cache: Path, repo_id: str, pipeline_dir: Path) -> Path:
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    shutil.copytree(pipeline_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.mark.slow
def test_repo_in_cache_loads(tmp_path, monkeypatch, tiny_dir):
    snapshot = _fake_hf_cache(tmp_path / "hub", "minmo-test/tiny-diarization", tiny_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("PYANNOTE_METRICS_ENABLED", "true")  # what importing pyannote sets
    diarizer = PyannoteDiarizer("minmo-test/tiny-diarization", device="cpu")
    assert diarizer.config_path == snapshot / "config.yaml"
    assert diarizer._pipeline._embedding.dimension == 256

    from pyannote.audio.telemetry.metrics import is_metrics_enabled

    assert not is_metrics_enabled()


@pytest.mark.slow
def test_loader_words_in_path_do_not_misroute_embedding(tmp_path, tiny_dir):
    # pyannote picks an embedding loader by substring for string entries; `$model/embedding`
    # reaches it as a dict, so a path like this one must still load pyannote's own model
    from pyannote.audio.pipelines.speaker_verification import (
        PyannoteAudioPretrainedSpeakerEmbedding,
    )

    odd = shutil.copytree(tiny_dir, tmp_path / "wespeaker-speechbrain-nvidia")
    diarizer = PyannoteDiarizer(str(odd), device="cpu")
    assert isinstance(diarizer._pipeline._embedding, PyannoteAudioPretrainedSpeakerEmbedding)
