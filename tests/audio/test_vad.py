"""BatchedSileroVad and speech_timestamps against stock silero-vad on real 16 kHz speech.

"Stock" probabilities step the TorchScript model one zero-padded 512-sample chunk at a time from
fresh state, exactly as `silero_vad.get_speech_timestamps` does before its post-processing.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from minmo.audio.vad import FRAME_SAMPLES, BatchedSileroVad, num_windows, speech_timestamps
from schemas.units import SAMPLE_RATE_HZ

silero_vad = pytest.importorskip("silero_vad")

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CLIPS = (
    "vad_speechbrain/train.wav",
    "vad_speechbrain/valid.wav",
    "asr_speechbrain_en/example1.wav",
    "asr_speechbrain_en/spk1_snt1.wav",
    "asr_speechbrain_en/spk2_snt3.wav",
    "asr_wenet_zh_en/aishell-BAC009S0724W0121.wav",
    "asr_wenet_zh_en/librispeech-1995-1837-0001.wav",
    "diar_pyannote_sample/sample.wav",  # 30 s, two speakers: long enough to force splits
)
PROB_TOLERANCE = 1e-4
# (name, keyword arguments for both speech_timestamps and stock get_speech_timestamps)
SETTINGS = [
    ("defaults", {}),
    ("ms resolution", {"time_resolution": 3}),
    ("low threshold", {"threshold": 0.3, "time_resolution": 3}),
    ("high threshold, own neg", {"threshold": 0.7, "neg_threshold": 0.4, "time_resolution": 3}),
    (
        "short speech, long silence, no pad",
        {"min_speech_duration_ms": 50, "min_silence_duration_ms": 400, "speech_pad_ms": 0},
    ),
    ("wide pad", {"speech_pad_ms": 300, "time_resolution": 3}),
    ("split at 2 s", {"max_speech_duration_s": 2.0, "time_resolution": 3}),
    (
        "split at 1 s, long silences",
        {"max_speech_duration_s": 1.0, "min_silence_duration_ms": 600, "time_resolution": 3},
    ),
]


def _read(relative: str) -> np.ndarray:
    audio, rate = sf.read(SHARED_DATA / relative, dtype="float32")
    assert rate == SAMPLE_RATE_HZ and audio.ndim == 1, f"{relative}: {rate} Hz, shape {audio.shape}"
    return audio


def _stock_probs(model, audio: np.ndarray) -> np.ndarray:
    model.reset_states()
    wav = torch.from_numpy(audio)
    probs = []
    with torch.no_grad():
        for start in range(0, len(wav), FRAME_SAMPLES):
            chunk = wav[start : start + FRAME_SAMPLES]
            chunk = torch.nn.functional.pad(chunk, (0, FRAME_SAMPLES - len(chunk)))
            probs.append(model(chunk, SAMPLE_RATE_HZ).item())
    return np.asarray(probs, dtype=np.float32)


def _stock_regions(regions: list[dict]) -> list[tuple[float, float]]:
    return [(r["start"], r["end"]) for r in regions]


def _assert_regions_close(got, want, tolerance_s: float = 1e-3) -> None:
    assert len(got) == len(want), f"{got} != {want}"
    for (start, end), (want_start, want_end) in zip(got, want, strict=True):
        assert abs(start - want_start) <= tolerance_s and abs(end - want_end) <= tolerance_s, (
            f"{got} != {want}"
        )


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test speech not found at {SHARED_DATA} (../shared/data beside the repo)")
    return {name: _read(name) for name in CLIPS}


@pytest.fixture(scope="module")
def stock_model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return silero_vad.load_silero_vad()


@pytest.fixture(scope="module")
def stock_probs(stock_model, clips) -> dict[str, np.ndarray]:
    return {name: _stock_probs(stock_model, audio) for name, audio in clips.items()}


@pytest.fixture(scope="module")
def vad() -> BatchedSileroVad:
    return BatchedSileroVad()


@pytest.fixture(scope="module")
def batched_probs(vad, clips) -> dict[str, np.ndarray]:
    return dict(zip(clips, vad.speech_probs(list(clips.values())), strict=True))


# --- probabilities ---------------------------------------------------------------------------


def test_probs_match_stock(clips, stock_probs, batched_probs):
    for name, audio in clips.items():
        got, want = batched_probs[name], stock_probs[name]
        assert got.dtype == np.float32
        assert got.shape == (math.ceil(len(audio) / FRAME_SAMPLES),), name
        np.testing.assert_allclose(got, want, atol=PROB_TOLERANCE, rtol=0, err_msg=name)
        assert got.min() < 0.1 < 0.9 < got.max(), f"{name}: real speech, with pauses"


def test_mixed_lengths_in_one_call_equal_each_alone(vad, clips):
    long = np.concatenate(list(clips.values()))  # ~80 s beside clips of 1-30 s and 700 samples
    streams = [clips[CLIPS[3]], long, clips[CLIPS[0]][:700], clips[CLIPS[7]], clips[CLIPS[2]]]
    together = vad.speech_probs(streams)
    for stream, probs in zip(streams, together, strict=True):
        np.testing.assert_allclose(probs, vad.speech_probs([stream])[0], atol=1e-5, rtol=0)


def test_state_carries_across_blocks_and_groups(clips, batched_probs):
    """Tiny blocks (7 windows over the running streams) and groups of 2 change nothing."""
    tiny = BatchedSileroVad(max_streams=2, block_windows=7)
    for name, probs in zip(clips, tiny.speech_probs(list(clips.values())), strict=True):
        np.testing.assert_allclose(probs, batched_probs[name], atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("num_samples", [1, 100, 511, 512, 513, 1024, 1500])
def test_tiny_streams_match_stock(vad, stock_model, clips, num_samples):
    audio = clips[CLIPS[2]][8000 : 8000 + num_samples]  # inside speech
    probs = vad.speech_probs([audio])[0]
    assert probs.shape == (num_windows(num_samples),)
    np.testing.assert_allclose(probs, _stock_probs(stock_model, audio), atol=PROB_TOLERANCE)


def test_empty_streams(vad, clips):
    empty = np.zeros(0, dtype=np.float32)
    assert vad.speech_probs([]) == []
    probs = vad.speech_probs([empty, clips[CLIPS[3]], empty])
    assert probs[0].shape == (0,) and probs[0].dtype == np.float32
    assert probs[2].shape == (0,)
    assert probs[1].shape == (num_windows(len(clips[CLIPS[3]])),)
    assert speech_timestamps(probs[0], 0) == []


def test_rejects_multichannel(vad):
    with pytest.raises(ValueError, match="1-D"):
        vad.speech_probs([np.zeros((2, SAMPLE_RATE_HZ), dtype=np.float32)])


# --- timestamps ------------------------------------------------------------------------------


def test_timestamps_end_to_end_match_stock(stock_model, clips, batched_probs):
    """Our probabilities + our post-processing == stock get_speech_timestamps on the audio."""
    for name, audio in clips.items():
        want = silero_vad.get_speech_timestamps(
            torch.from_numpy(audio), stock_model, return_seconds=True
        )
        got = speech_timestamps(batched_probs[name], len(audio))
        assert got, f"{name}: real speech, no regions"
        _assert_regions_close(got, _stock_regions(want))


@pytest.mark.parametrize(("label", "kwargs"), SETTINGS, ids=[s[0] for s in SETTINGS])
def test_timestamps_match_stock_postprocessing(clips, stock_probs, batched_probs, label, kwargs):
    """Per setting: stock's own post-processing of stock probabilities (what
    get_speech_timestamps returns) == ours on stock probabilities, and on ours within 1 ms."""
    for name, audio in clips.items():
        want = _stock_regions(
            silero_vad.get_speech_timestamps_from_probs(
                stock_probs[name].tolist(),
                audio_length_samples=len(audio),
                return_seconds=True,
                **kwargs,
            )
        )
        assert speech_timestamps(stock_probs[name], len(audio), **kwargs) == want, name
        _assert_regions_close(speech_timestamps(batched_probs[name], len(audio), **kwargs), want)


def test_max_duration_forces_splits(clips, batched_probs):
    name = "diar_pyannote_sample/sample.wav"
    probs, n = batched_probs[name], len(clips[name])
    unsplit = speech_timestamps(probs, n, time_resolution=3)
    split = speech_timestamps(probs, n, max_speech_duration_s=2.0, time_resolution=3)
    assert max(end - start for start, end in unsplit) > 2.0
    assert len(split) > len(unsplit)
    # padding may add up to 2 x 30 ms on top of the cut; stock reserves that room
    assert max(end - start for start, end in split) <= 2.0 + 1e-9


@pytest.mark.slow
@pytest.mark.parametrize(("label", "kwargs"), SETTINGS, ids=[s[0] for s in SETTINGS])
def test_timestamps_end_to_end_all_settings(stock_model, clips, batched_probs, label, kwargs):
    for name, audio in clips.items():
        want = silero_vad.get_speech_timestamps(
            torch.from_numpy(audio), stock_model, return_seconds=True, **kwargs
        )
        _assert_regions_close(
            speech_timestamps(batched_probs[name], len(audio), **kwargs), _stock_regions(want)
        )


def _random_probs(rng: np.random.Generator, n: int) -> np.ndarray:
    """Bursty probabilities: speech and silence runs of random length, with noise near 0.5."""
    probs, speaking = [], bool(rng.integers(2))
    while len(probs) < n:
        run = int(rng.geometric(1 / rng.choice([3, 15, 60])))
        centre = 0.85 if speaking else 0.1
        probs.extend(np.clip(rng.normal(centre, 0.25, run), 0, 1))
        speaking = not speaking
    return np.asarray(probs[:n], dtype=np.float32)


def test_timestamps_match_stock_on_random_probabilities():
    """Sample-exact (time_resolution=7 keeps every 1/16000 s) on thousands of windows, with
    max-duration settings that exercise both the longest-silence cut and the hard cut."""
    rng = np.random.default_rng(0)
    settings = [kwargs for _, kwargs in SETTINGS] + [
        {"max_speech_duration_s": 0.5, "min_silence_duration_ms": 0},
        {"max_speech_duration_s": 3.0, "threshold": 0.6, "speech_pad_ms": 100},
        {"min_speech_duration_ms": 0, "min_silence_duration_ms": 0, "speech_pad_ms": 0},
    ]
    for trial in range(60):
        n_windows = int(rng.integers(1, 1500))
        num_samples = n_windows * FRAME_SAMPLES - int(rng.integers(0, FRAME_SAMPLES))
        probs = _random_probs(rng, n_windows)
        for kwargs in settings:
            kwargs = {**kwargs, "time_resolution": 7}
            want = silero_vad.get_speech_timestamps_from_probs(
                probs.tolist(), audio_length_samples=num_samples, return_seconds=True, **kwargs
            )
            got = speech_timestamps(probs, num_samples, **kwargs)
            assert got == _stock_regions(want), (trial, kwargs)


def test_timestamps_reject_mismatched_length():
    with pytest.raises(ValueError, match="do not fit"):
        speech_timestamps(np.zeros(3, dtype=np.float32), SAMPLE_RATE_HZ)


# --- sanity against human reference labels ----------------------------------------------------


def _speech_mask(regions: list[tuple[float, float]], duration_s: float) -> np.ndarray:
    """Speech/non-speech per 10 ms."""
    mask = np.zeros(round(duration_s * 100), dtype=bool)
    for start, end in regions:
        mask[round(start * 100) : round(end * 100)] = True
    return mask


@pytest.mark.parametrize("labels", ["VAD_train.json", "VAD_dev.json"])
def test_roughly_agrees_with_reference_labels(vad, labels):
    """Loose: the reference boundaries are human choices, not silero's; this guards against a
    gross error (shifted windows, inverted output), not against small disagreements."""
    folder = SHARED_DATA / "vad_speechbrain"
    examples = json.loads((folder / labels).read_text()).values()
    for example in examples:
        wav = _read(f"vad_speechbrain/{Path(example['wav']['file']).name}")
        segment = wav[example["wav"]["start"] : example["wav"]["stop"]]
        bounds = [float(x) for x in example["speech"].split()]
        reference = list(zip(bounds[::2], bounds[1::2], strict=True))
        duration = len(segment) / SAMPLE_RATE_HZ
        got = speech_timestamps(vad.speech_probs([segment])[0], len(segment), time_resolution=3)
        agreement = (_speech_mask(got, duration) == _speech_mask(reference, duration)).mean()
        assert agreement > 0.85, (example, got)
        assert bool(got) == bool(reference), (example, got)
