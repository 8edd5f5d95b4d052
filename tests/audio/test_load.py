"""Reading a recording stored one file per channel: stacking, tolerance, refusals, relocation.

The two channel files are the real stereo clip of ../shared/data/stereo_fasterwhisper_2ch (one
voice per channel) written out as two mono files, as a two-track call export ships.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from minmo.audio.load import load_source
from minmo.io.channel_uri import channel_uris, is_multi_source, join_channels, map_channels
from pipelines.audio_source import RecordingCache, SourceRoots, load_audio_16k
from schemas.quarantine import ReasonCode, Rejected

CALL = Path("stereo_fasterwhisper_2ch") / "stereo_diarization.wav"
RATE = 16000


@pytest.fixture()
def call(shared_data: Path, tmp_path: Path) -> tuple[np.ndarray, Path, Path]:
    """The stereo clip as int16 (frames, 2), and its left and right channels as mono files."""
    stereo, rate = sf.read(shared_data / CALL, dtype="int16")
    assert rate == RATE and stereo.shape[1] == 2
    left, right = tmp_path / "call_a.wav", tmp_path / "call_b.wav"
    sf.write(left, stereo[:, 0], RATE, subtype="PCM_16")
    sf.write(right, stereo[:, 1], RATE, subtype="PCM_16")
    return stereo, left, right


def test_the_uri_form_round_trips_and_a_plain_uri_is_untouched() -> None:
    uri = join_channels(["/c/a b.wav", "s3://bucket/b.flac"])
    assert uri == 'channels:["/c/a b.wav","s3://bucket/b.flac"]' and is_multi_source(uri)
    assert channel_uris(uri) == ["/c/a b.wav", "s3://bucket/b.flac"]
    assert join_channels(["/c/a.wav"]) == "/c/a.wav" == map_channels("/c/a.wav", str)
    assert map_channels(uri, str.upper) == 'channels:["/C/A B.WAV","S3://BUCKET/B.FLAC"]'
    with pytest.raises(ValueError, match="JSON array"):
        channel_uris("channels:/c/a.wav")
    with pytest.raises(ValueError, match="two or more"):
        channel_uris('channels:["/c/a.wav"]')


def test_two_files_stack_into_the_stereo_recording(call, shared_data: Path) -> None:
    stereo, left, right = call
    loaded = load_source(join_channels([str(left), str(right)]), {}, tolerance_s=0.1)
    assert loaded.audio.samples.shape == (2, stereo.shape[0])
    assert loaded.audio.sample_rate_hz == RATE and loaded.audio.bits == 16
    assert loaded.bytes == left.stat().st_size + right.stat().st_size
    assert loaded.padded == {}
    original = load_source(str(shared_data / CALL), {}).audio.samples
    assert np.array_equal(loaded.audio.samples, original)


def test_a_slightly_short_file_is_padded_with_silence(call) -> None:
    stereo, left, right = call
    sf.write(right, stereo[:-800, 1], RATE, subtype="PCM_16")  # 50 ms short
    loaded = load_source(join_channels([str(left), str(right)]), {}, tolerance_s=0.1)
    assert loaded.padded == {str(right): 0.05}
    samples = loaded.audio.samples
    assert samples.shape == (2, stereo.shape[0])
    assert not samples[1, -800:].any() and np.array_equal(
        samples[1, :-800], stereo[:-800, 1] / np.float32(32768)
    )


def test_lengths_beyond_the_tolerance_are_refused_with_both_lengths(call) -> None:
    stereo, left, right = call
    sf.write(right, stereo[: -RATE // 2, 1], RATE, subtype="PCM_16")  # 0.5 s short
    uri = join_channels([str(left), str(right)])
    with pytest.raises(Rejected) as refused:
        load_source(uri, {}, tolerance_s=0.1)
    assert refused.value.reason == ReasonCode.CHANNEL_LENGTH_MISMATCH
    detail = refused.value.detail
    assert "by 0.500 s" in detail and "5.000 s" in detail and "4.500 s" in detail
    assert str(right) in detail
    # later readers (no tolerance: ingest vetted the files) stack whatever they find
    assert load_source(uri, {}).padded == {str(right): 0.5}


def test_sample_rates_that_differ_are_refused(call) -> None:
    stereo, left, right = call
    sf.write(right, stereo[::2, 1], RATE // 2, subtype="PCM_16")  # same duration, 8 kHz
    with pytest.raises(Rejected, match="16000 Hz.*8000 Hz") as refused:
        load_source(join_channels([str(left), str(right)]), {}, tolerance_s=0.1)
    assert refused.value.reason == ReasonCode.CHANNEL_LENGTH_MISMATCH


def test_a_bad_channel_file_is_named(call, tmp_path: Path) -> None:
    # (undecodable bytes are left out: the second decoder's import costs ~10 s; load_source
    # prefixes the DecodeError with the file exactly as it does the refusals below)
    _, left, _ = call
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(Rejected, match="empty.wav is 0 bytes") as refused:
        load_source(join_channels([str(left), str(empty)]), {})
    assert refused.value.reason == ReasonCode.EMPTY_AUDIO
    with pytest.raises(Rejected) as missing:
        load_source(join_channels([str(left), str(tmp_path / "gone.wav")]), {})
    assert missing.value.reason == ReasonCode.MISSING_FILE


def test_the_step_loader_reads_a_moved_multi_source_recording(call, tmp_path: Path) -> None:
    """Every step reads source audio through load_audio_16k; `--source-root` moves apply to
    each channel file."""
    stereo, left, right = call
    uri = join_channels([str(left), str(right)])
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in (left, right):
        shutil.move(f, moved / f.name)
    roots = SourceRoots.parse([f"{tmp_path}={moved}"])
    assert roots.unresolve(roots.resolve(uri)) == uri
    audio = load_audio_16k(uri, 2, {}, roots)
    assert np.array_equal(audio, (stereo.T / np.float32(32768)).astype(np.float32))
    assert load_audio_16k(uri, 1, {}, roots).shape == (1, stereo.shape[0])


def test_a_span_of_one_side_for_the_shard_step(call) -> None:
    """The shard and annotate steps cut spans through RecordingCache: one side of the call."""
    stereo, left, right = call
    ref = {
        "uri": join_channels([str(left), str(right)]),
        "channels": 2,
        "channel": 1,
        "start_s": 1.0,
        "end_s": 2.0,
    }
    span = RecordingCache({}).span(ref)
    assert np.array_equal(span[0], stereo[RATE : 2 * RATE, 1] / np.float32(32768))
