import io

import numpy as np
import pytest
import soundfile as sf

from minmo.audio import measure
from minmo.audio.decode import DecodeError, container_of, decode_audio
from minmo.audio.resample import resample
from schemas.units import SAMPLE_RATE_HZ


def _wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, subtype=subtype, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("folder", "name", "rate", "channels", "bits"),
    [
        ("asr_whisper_jfk", "jfk.flac", 44100, 2, 24),
        ("asr_fasterwhisper_en_de", "multilingual.mp3", None, 1, None),
        ("stereo_aws_lca_autorepairs40", None, 8000, 2, 16),
        ("asr_wenet_zh_en", "aishell-BAC009S0724W0121.wav", 16000, 1, 16),
    ],
)
def test_decodes_real_files(shared_data, folder, name, rate, channels, bits):
    path = shared_data / folder / name if name else next((shared_data / folder).glob("*.wav"))
    audio = decode_audio(path.read_bytes(), container_of(str(path)))
    assert audio.channels == channels
    assert audio.bits == bits
    if rate:
        assert audio.sample_rate_hz == rate
    assert audio.duration_s > 1.0
    assert np.isfinite(audio.samples).all()


def test_jfk_dual_mono_folds_to_mono(shared_data):
    audio = decode_audio((shared_data / "asr_whisper_jfk" / "jfk.flac").read_bytes(), "flac")
    assert measure.fold_dual_mono(audio.samples).shape[0] == 1


def test_true_stereo_is_kept(shared_data):
    path = next((shared_data / "stereo_mcgill_M1F1").glob("*.wav"))
    audio = decode_audio(path.read_bytes(), "wav")
    assert measure.fold_dual_mono(audio.samples).shape[0] == 2


def test_garbage_raises_decode_error_naming_both_decoders():
    with pytest.raises(DecodeError, match="soundfile"):
        decode_audio(b"this is not audio at all" * 100, "wav")


def test_levels_and_clipping():
    t = np.arange(SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ
    sine = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
    assert measure.peak_dbfs(sine) == pytest.approx(-6.02, abs=0.05)
    assert measure.rms_dbfs(sine) == pytest.approx(-9.03, abs=0.05)
    assert measure.clipping_ratio(sine) == 0.0
    clipped = np.clip(sine * 4, -1, 1)
    assert measure.clipping_ratio(clipped) > 0.5


def test_content_hash_ignores_container_but_not_content():
    x = (np.random.default_rng(0).standard_normal(8000) * 3000).astype(np.int16)
    wav = decode_audio(_wav_bytes(x, SAMPLE_RATE_HZ), "wav")
    flac = decode_audio(_wav_bytes(x, SAMPLE_RATE_HZ, fmt="FLAC"), "flac")
    assert measure.content_sha1(wav.samples, SAMPLE_RATE_HZ) == measure.content_sha1(
        flac.samples, SAMPLE_RATE_HZ
    )
    other = decode_audio(_wav_bytes(x // 2, SAMPLE_RATE_HZ), "wav")
    assert measure.content_sha1(other.samples, SAMPLE_RATE_HZ) != measure.content_sha1(
        wav.samples, SAMPLE_RATE_HZ
    )


def test_snr_estimate_tracks_noise_level():
    rng = np.random.default_rng(1)
    frames = 200
    speech = np.zeros(frames, bool)
    speech[50:150] = True
    signal = np.where(np.repeat(speech, 512), rng.standard_normal(frames * 512) * 0.3, 0.0)
    for noise_db in (-20, -40):
        noise = rng.standard_normal(frames * 512) * 0.3 * 10 ** (noise_db / 20)
        powers = measure.frame_powers(signal + noise, 512)
        assert measure.snr_db(powers, speech) == pytest.approx(-noise_db, abs=1.0)
    assert measure.snr_db(powers, np.zeros(frames, bool)) is None


def test_resample_8k_to_16k_keeps_duration_and_tone():
    t = np.arange(8000) / 8000
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)[None]
    out = resample(tone, 8000, SAMPLE_RATE_HZ)
    assert out.shape == (1, SAMPLE_RATE_HZ)
    spectrum = np.abs(np.fft.rfft(out[0]))
    assert abs(int(np.argmax(spectrum)) - 1000) <= 1


@pytest.mark.parametrize(
    ("codec", "ext"), [("aac", "m4a"), ("libopus", "opus"), ("libopus", "webm")]
)
def test_ffmpeg_only_containers_decode_in_process(tmp_path, shared_data, codec, ext):
    """m4a/opus/webm are not libsndfile formats: they go through torchcodec (FFmpeg's
    libraries in this process). The ffmpeg CLI only makes the fixture."""
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is not installed (make test installs it: apt-get install ffmpeg)")
    out = tmp_path / f"jfk.{ext}"
    src = shared_data / "asr_whisper_jfk" / "jfk.flac"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(src), "-c:a", codec, str(out)], check=True
    )
    audio = decode_audio(out.read_bytes(), ext)
    assert audio.container == ext and audio.bits is None
    assert abs(audio.duration_s - 11.0) < 0.1
    assert audio.channels == 2 and np.abs(audio.samples).max() > 0.1
