"""SpeechTokenizer on a tiny random-init S3 tokenizer v2 checkpoint: counts, ranges, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from s3tokenizer.utils import log_mel_spectrogram, padding

from minmo.testing.tiny_models import build_tiny_checkpoint
from minmo.tokens.speech import (
    SpeechTokenizer,
    config_path_for,
    n_speech_tokens,
)
from schemas.shards import SPEECH_VOCAB as CODEBOOK_SIZE
from schemas.units import SAMPLE_RATE_HZ


def _clip(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise plus a chirp, so the tiny model sees varied frames."""
    n = int(round(seconds * SAMPLE_RATE_HZ))
    t = np.arange(n) / SAMPLE_RATE_HZ
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.05 * rng.standard_normal(n)).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> SpeechTokenizer:
    path = build_tiny_checkpoint(tmp_path_factory.mktemp("s3") / "tiny.pt")
    return SpeechTokenizer(path, device="cpu")


def _upstream(tok: SpeechTokenizer, clip: np.ndarray) -> np.ndarray:
    mels, lens = padding([log_mel_spectrogram(torch.from_numpy(clip))])
    codes, code_lens = tok.model.quantize(mels, lens)
    return codes[0, : code_lens[0]].numpy()


def test_tiny_checkpoint_loads_through_init_from_pt(tmp_path):
    path = build_tiny_checkpoint(tmp_path / "tiny.pt")
    assert path.is_file() and config_path_for(path).is_file()
    tok = SpeechTokenizer(path, device="cpu")
    assert not tok.random_init
    assert tok.model.config.n_audio_state == 128 and len(tok.model.encoder.blocks) == 2


def test_missing_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        SpeechTokenizer(tmp_path / "absent.pt", device="cpu")


@pytest.mark.parametrize(
    ("seconds", "expected"), [(1.0, 25), (2.5, 63), (7.04, 176), (35.0, 875), (53.0, 1325)]
)
def test_token_count_rule(tokenizer, seconds, expected):
    clip = _clip(seconds)
    codes = tokenizer.tokenize([clip])[0]
    assert n_speech_tokens(len(clip)) == expected
    assert codes.dtype == np.int32 and codes.shape == (expected,)
    assert codes.min() >= 0 and codes.max() < CODEBOOK_SIZE


def test_long_clip_matches_s3tokenizer_chunked_path(tokenizer):
    # 35 s: upstream's chunked path is correct here, and ours must give the same codes.
    clip = _clip(35.0, seed=1)
    assert np.array_equal(tokenizer.tokenize([clip])[0], _upstream(tokenizer, clip))


def test_long_clip_where_upstream_loses_tokens(tokenizer):
    # 53 s = 5300 frames: upstream opens a 100-frame tail window and its merge drops 50 tokens.
    clip = _clip(53.0, seed=2)
    ours = tokenizer.tokenize([clip])[0]
    assert len(_upstream(tokenizer, clip)) < len(ours) == n_speech_tokens(len(clip))


def test_batch_equals_one_by_one_and_is_deterministic(tokenizer):
    clips = [_clip(s, seed=i) for i, s in enumerate([1.0, 2.5, 7.04, 35.0, 0.3])]
    batched = tokenizer.tokenize(clips)
    singles = [tokenizer.tokenize([c])[0] for c in clips]
    again = tokenizer.tokenize(clips)
    for b, s, a in zip(batched, singles, again, strict=True):
        assert np.array_equal(b, s) and np.array_equal(b, a)


def test_bad_input_is_rejected(tokenizer):
    assert tokenizer.tokenize([]) == []
    with pytest.raises(ValueError, match="shorter"):
        tokenizer.tokenize([np.zeros(100, np.float32)])
    with pytest.raises(ValueError, match="mono"):
        tokenizer.tokenize([np.zeros((2, SAMPLE_RATE_HZ), np.float32)])


def test_random_init_is_flagged_and_seeded():
    tok = SpeechTokenizer(None, device="cpu")
    assert tok.random_init and tok.checkpoint is None
    assert tok.model.config.n_audio_state == 1280  # full size: a fresh ModelConfig, not mutated
    clip = _clip(1.0)
    codes = tok.tokenize([clip])[0]
    assert codes.shape == (25,)
    assert np.array_equal(codes, SpeechTokenizer(None, device="cpu").tokenize([clip])[0])
