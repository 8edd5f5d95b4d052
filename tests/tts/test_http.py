"""HTTP TTS client against the local CosyVoice stub: endpoints, forms, order, concurrency, retries."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from minmo.testing.cosyvoice_stub_server import StubServer, parse_form, run_stub_server
from minmo.tts.base import Style, Synthesized, TtsFailure, TtsRequest, Voice
from minmo.tts.http import HttpTtsBackend, instruct_text
from minmo.tts.registry import make_backend

SFT = Voice("spk1", "en", engine_voice="英文女")


@pytest.fixture
def prompt_wav(tmp_path):
    path = tmp_path / "prompt.wav"
    t = np.arange(8000) / 16000
    sf.write(path, (0.1 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000)
    return str(path)


def backend(url: str, **options) -> HttpTtsBackend:
    return HttpTtsBackend(url, **{"backoff_s": 0.01, "timeout_s": 5, **options})


def test_endpoint_and_form_per_request(prompt_wav):
    requests = [
        TtsRequest("sft", "plain line", SFT),
        TtsRequest("ins", "styled line", SFT, Style(emotion="happy", speaking_rate=1.3)),
        TtsRequest("zs", "cloned", Voice("s2", "en", prompt_wav=prompt_wav, prompt_text="hi")),
        TtsRequest("xl", "cloned, no transcript", Voice("s2", "en", prompt_wav=prompt_wav)),
        TtsRequest(
            "ins2",
            "cloned and styled",
            Voice("s2", "en", prompt_wav=prompt_wav, prompt_text="hi"),
            Style(instruction="用四川话说这句话"),
        ),
    ]
    with StubServer() as stub:
        out = backend(stub.base_url).synthesize(requests)
    assert all(isinstance(o, Synthesized) for o in out)
    got = {r.fields["tts_text"]: r for r in stub.requests}
    assert got["plain line"].endpoint == "/inference_sft"
    assert got["plain line"].fields == {"tts_text": "plain line", "spk_id": "英文女"}
    styled = got["styled line"]
    assert styled.endpoint == "/inference_instruct" and styled.fields["spk_id"] == "英文女"
    assert styled.fields["instruct_text"] == "Speak in a happy tone, faster than normal."
    prompt_bytes = Path(prompt_wav).read_bytes()
    zero = got["cloned"]
    assert zero.endpoint == "/inference_zero_shot" and zero.fields["prompt_text"] == "hi"
    assert zero.files == {"prompt_wav": prompt_bytes}
    assert got["cloned, no transcript"].endpoint == "/inference_cross_lingual"
    ins2 = got["cloned and styled"]
    assert ins2.endpoint == "/inference_instruct2"
    assert ins2.fields["instruct_text"] == "用四川话说这句话" and ins2.files["prompt_wav"]


def test_use_instruct_false_drops_style():
    with StubServer() as stub:
        client = backend(stub.base_url, use_instruct=False)
        client.synthesize([TtsRequest("a", "x", SFT, Style(emotion="sad"))])
    assert [r.endpoint for r in stub.requests] == ["/inference_sft"]


def test_order_preserved_and_in_flight_bounded():
    requests = [TtsRequest(f"k{i}", "word " * (i + 1), SFT) for i in range(12)]
    with StubServer(delay_s=0.05, seconds_per_char=0.01) as stub:
        client = backend(stub.base_url, max_in_flight=3)
        out = client.synthesize(requests)
    durations = [o.duration_s for o in out]
    assert durations == sorted(durations) and len(set(durations)) == 12  # grows with text
    assert stub.max_in_flight_seen == 3
    assert client.last_batch.ok == 12 and client.last_batch.by_endpoint == {"/inference_sft": 12}


def test_decodes_pcm_and_rate_header():
    with StubServer(sample_rate_hz=24000, send_rate_header=True) as stub:
        (out,) = backend(stub.base_url).synthesize([TtsRequest("a", "hello", SFT)])
    assert out.sample_rate_hz == 24000 and out.samples.dtype == np.float32
    assert out.duration_s == pytest.approx(0.1 + 0.02 * 5, abs=1e-3)
    assert 0.25 < np.abs(out.samples).max() <= 0.31
    with run_stub_server(sample_rate_hz=24000) as url:  # no header: the configured rate
        (out,) = backend(url, sample_rate_hz=24000).synthesize([TtsRequest("a", "hello", SFT)])
    assert out.sample_rate_hz == 24000


def test_flaky_server_loses_nothing_and_counts_retries():
    requests = [TtsRequest(f"k{i}", f"line {i}", SFT) for i in range(10)]
    with StubServer(fail_first=2, fail_every=4) as stub:
        client = backend(stub.base_url, max_in_flight=2, retries=4)
        out = client.synthesize(requests)
    assert all(isinstance(o, Synthesized) for o in out)
    failures = sum(r.status == 500 for r in stub.requests)
    assert failures >= 3
    assert client.retries_used == failures == client.last_batch.retries
    ok_texts = sorted(r.fields["tts_text"] for r in stub.requests if r.status == 200)
    assert ok_texts == sorted(r.text for r in requests)  # each line spoken exactly once


def test_always_failing_server_gives_failures_not_exceptions():
    with StubServer(fail_first=10**6) as stub:
        client = backend(stub.base_url, retries=2)
        out = client.synthesize([TtsRequest("a", "x", SFT), TtsRequest("b", "y", SFT)])
    assert all(isinstance(o, TtsFailure) and o.reason == "tts_failed" for o in out)
    assert "gave up after 2 retries" in out[0].detail and "HTTP 500" in out[0].detail
    assert len(stub.requests) == 6 and client.retries_used == 4
    assert client.last_batch.failed == 2


def test_timeouts_are_retried_then_fail():
    with StubServer(delay_s=1.0) as stub:
        client = backend(stub.base_url, retries=1, timeout_s=0.2)
        (out,) = client.synthesize([TtsRequest("a", "x", SFT)])
    assert isinstance(out, TtsFailure) and "timed out" in out.detail
    assert client.retries_used == 1


def test_connection_refused_is_a_failure():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    client = backend(f"http://127.0.0.1:{port}", retries=1)
    (out,) = client.synthesize([TtsRequest("a", "x", SFT)])
    assert isinstance(out, TtsFailure) and "connection error" in out.detail


def test_bad_requests_fail_without_retry(tmp_path):
    requests = [
        TtsRequest("nospk", "x", Voice("s", "en")),
        TtsRequest("noprompt", "x", Voice("s", "en", prompt_wav=str(tmp_path / "missing.wav"))),
        TtsRequest("empty", " ", SFT),
        TtsRequest("ok", "fine", SFT),
    ]
    with StubServer() as stub:
        client = backend(stub.base_url)
        out = client.synthesize(requests)
    assert [type(o).__name__ for o in out] == ["TtsFailure"] * 3 + ["Synthesized"]
    assert "engine_voice" in out[0].detail and "cannot read prompt_wav" in out[1].detail
    assert client.retries_used == 0 and len(stub.requests) == 1


def test_http_4xx_is_not_retried():
    with StubServer() as stub:
        client = backend(stub.base_url + "/no/such/prefix")
        (out,) = client.synthesize([TtsRequest("a", "x", SFT)])
    assert isinstance(out, TtsFailure) and "HTTP 404" in out.detail
    assert client.retries_used == 0


def test_stub_parses_the_forms_httpx_sends():
    """The backend's forms are httpx's encodings: multipart with a prompt clip, urlencoded
    without one. The stub (and FastAPI's Form()) must read both."""
    fields = {"tts_text": 'a "quoted"\nline', "spk_id": "中文女"}
    upload = {"prompt_wav": ("p.wav", b"\x00\r\n", "application/octet-stream")}
    multipart = httpx.Request("POST", "http://stub/", data=fields, files=upload)
    assert multipart.headers["content-type"].startswith("multipart/form-data")
    assert parse_form(multipart.headers["content-type"], multipart.read()) == (
        fields,
        {"prompt_wav": b"\x00\r\n"},
    )
    plain = httpx.Request("POST", "http://stub/", data=fields)
    assert parse_form(plain.headers["content-type"], plain.read()) == (fields, {})


def test_instruct_text_and_registry():
    assert instruct_text(Style()) is None
    assert instruct_text(Style(speaking_rate=1.0, pitch=1.0)) is None
    assert instruct_text(Style(pitch=0.8, dialect="en-gb")) == (
        "Speak with a lower pitch, with a en-gb accent."
    )
    assert isinstance(make_backend("http", base_url="http://127.0.0.1:1"), HttpTtsBackend)
    with pytest.raises(ValueError, match="did you mean 'espeak'"):
        make_backend("espeek")
    with pytest.raises(ValueError, match="api="):
        HttpTtsBackend("http://x", api="fish")
