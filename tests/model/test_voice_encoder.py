"""The voice encoder on CPU: batched frontend against funasr's WavFrontend on real speech, the
60 ms frame rate, the tiny encoder's forward/backward and padding independence, loading a
SenseVoice-shaped directory, and the full-size parameter count against the paper's 636 M."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import soundfile as sf
import torch

from minmo.demo.annotator import build_tiny_sensevoice_dir
from minmo.model.voice_encoder import (
    VoiceEncoder,
    VoiceEncoderConfig,
    load_am_mvn,
)
from schemas.units import SAMPLE_RATE_HZ

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "asr_speechbrain_en"


def _read(name: str) -> torch.Tensor:
    audio, rate = sf.read(DATA / name, dtype="float32")
    assert rate == SAMPLE_RATE_HZ and audio.ndim == 1
    return torch.from_numpy(audio)


def _pad(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    return batch, lengths


@pytest.fixture(scope="module")
def speech() -> list[torch.Tensor]:
    return [_read("example1.wav"), _read("spk1_snt1.wav")]


@pytest.fixture(scope="module")
def tiny() -> VoiceEncoder:
    torch.manual_seed(0)
    return VoiceEncoder(VoiceEncoderConfig.tiny()).eval()


def test_features_match_funasr_wav_frontend(speech, tiny):
    from funasr.frontends.wav_frontend import WavFrontend

    frontend = WavFrontend(**tiny.config.frontend_conf())
    singles = []
    for wave in [*speech, speech[0][:399], speech[0][:4000]]:
        ours, n = tiny.features(wave[None], torch.tensor([len(wave)]))
        ref, ref_n = frontend(wave[None], torch.tensor([len(wave)]))
        assert ours.shape == ref.shape and n.tolist() == ref_n.tolist()
        assert (ours - ref).abs().max() < 1e-3
        assert (ours - ref).abs().mean() < 1e-5
        singles.append(ours[0])

    batch, lengths = _pad(speech)
    feats, feat_lengths = tiny.features(batch, lengths)
    _, ref_lengths = frontend(batch, lengths)
    assert feat_lengths.tolist() == ref_lengths.tolist()
    for i, single in enumerate(singles[:2]):
        n = int(feat_lengths[i])
        torch.testing.assert_close(feats[i, :n], single, rtol=0, atol=1e-5)
        assert not feats[i, n:].any()


@pytest.mark.parametrize(
    "samples", [400, 401, 1599, SAMPLE_RATE_HZ, SAMPLE_RATE_HZ * 3, SAMPLE_RATE_HZ * 3 + 959]
)
def test_one_frame_per_60_ms(tiny, samples):
    wave = 0.1 * torch.randn(1, samples, generator=torch.Generator().manual_seed(samples))
    feats, n = tiny.features(wave, torch.tensor([samples]))
    fbank_frames = 1 + (samples - 400) // 160
    assert n.item() == feats.shape[1] == math.ceil(fbank_frames / 6)
    assert abs(n.item() - samples / SAMPLE_RATE_HZ / tiny.config.frame_seconds) <= 1


def test_forward_tiny(speech, tiny):
    batch, lengths = _pad([speech[0][:24000], speech[1][:13000]])
    out, out_lengths = tiny(batch, lengths)
    _, feat_lengths = tiny.features(batch, lengths)
    assert tiny.output_size == 64
    assert out.shape == (2, int(feat_lengths.max()), 64)
    assert out_lengths.dtype == torch.long and out_lengths.tolist() == feat_lengths.tolist()
    assert not out[1, out_lengths[1] :].any()

    for i in range(2):
        single, _ = tiny(batch[i : i + 1, : lengths[i]], lengths[i : i + 1])
        n = int(out_lengths[i])
        torch.testing.assert_close(out[i, :n], single[0], rtol=1e-4, atol=1e-4)

    tiny.train()
    try:
        tiny.zero_grad()
        out, out_lengths = tiny(batch, lengths)
        out.square().mean().backward()
        grads = {n: p.grad for n, p in tiny.encoder.named_parameters()}
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
        assert grads["encoders0.0.self_attn.linear_q_k_v.weight"].abs().sum() > 0
        assert grads["tp_encoders.0.feed_forward.w_2.weight"].abs().sum() > 0
    finally:
        tiny.zero_grad()
        tiny.eval()


def test_encode_features_leaves_input_alone(tiny):
    feats = torch.randn(1, 5, 560)
    copy = feats.clone()
    tiny.encode_features(feats, torch.tensor([5]))
    assert torch.equal(feats, copy)


def test_from_pretrained_round_trip(tmp_path, speech):
    model_dir = build_tiny_sensevoice_dir(tmp_path / "sensevoice", seed=3)
    state = torch.load(model_dir / "model.pt", weights_only=True)
    assert any(k.startswith("ctc.") for k in state) and "embed.weight" in state
    assert state["ctc.ctc_lo.weight"].shape[0] == 25055

    encoder = VoiceEncoder.from_pretrained(model_dir).eval()
    assert encoder.config == VoiceEncoderConfig.tiny()
    ours = encoder.encoder.state_dict()
    expected = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    assert ours.keys() == expected.keys()
    assert all(torch.equal(ours[k], expected[k]) for k in expected)

    shift, scale = load_am_mvn(model_dir / "am.mvn")
    assert shift.shape == scale.shape == (560,)
    assert torch.allclose(encoder.cmvn_shift, shift) and torch.allclose(encoder.cmvn_scale, scale)
    plain = VoiceEncoder(VoiceEncoderConfig.tiny())
    batch, lengths = _pad(speech)
    normed, n = encoder.features(batch, lengths)
    raw, raw_n = plain.features(batch, lengths)
    assert n.tolist() == raw_n.tolist()
    for i in range(2):
        k = int(n[i])
        torch.testing.assert_close(normed[i, :k], (raw[i, :k] + shift) * scale)
        assert not normed[i, k:].any()
    # normalised log-mels sit near zero; raw ones near +10
    assert normed[0, : n[0]].mean().abs() < raw[0, : n[0]].mean().abs()

    # the CMVN travels in the state dict
    reloaded = VoiceEncoder(VoiceEncoderConfig.tiny())
    reloaded.load_state_dict(encoder.state_dict())
    assert torch.equal(reloaded.cmvn_scale, scale)


def test_from_pretrained_errors(tmp_path):
    model_dir = build_tiny_sensevoice_dir(tmp_path / "sv")
    with pytest.raises(FileNotFoundError, match="directory not found"):
        VoiceEncoder.from_pretrained(tmp_path / "nowhere")

    (model_dir / "model.pt").rename(tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match="missing model.pt"):
        VoiceEncoder.from_pretrained(model_dir)
    (tmp_path / "model.pt").rename(model_dir / "model.pt")

    (model_dir / "config.yaml").rename(tmp_path / "config.yaml")
    with pytest.raises(FileNotFoundError, match="missing config.yaml"):
        VoiceEncoder.from_pretrained(model_dir)
    (tmp_path / "config.yaml").rename(model_dir / "config.yaml")

    wrong = VoiceEncoderConfig(
        output_size=32, attention_heads=2, linear_units=64, num_blocks=2, tp_blocks=1
    )
    with pytest.raises(ValueError, match="do not fit"):
        VoiceEncoder.from_pretrained(model_dir, config=wrong)

    with pytest.raises(ValueError, match="did you mean 'num_blocks'"):
        VoiceEncoderConfig.from_funasr({"num_block": 3})


def test_full_size_parameter_count():
    config = VoiceEncoderConfig.full()
    with torch.device("meta"):
        encoder = VoiceEncoder(config)
    count = sum(p.numel() for p in encoder.parameters())
    assert all(p.is_meta for p in encoder.parameters())
    assert abs(count - 636e6) / 636e6 < 0.10
    assert count == 628_952_160 and encoder.output_size == config.output_size == 1024
