"""A `TtsBackend` that speaks through a TTS server users run on GPUs (CosyVoice's FastAPI server).

Owns: choosing the server endpoint and form fields per request, uploading prompt clips, keeping at
most `max_in_flight` requests in flight, retrying transient failures with exponential backoff,
and decoding the raw int16 PCM the server streams back. The HTTP itself (connection pooling,
form encoding, timeouts) is httpx's. Must not: resample or post-process audio, or raise for one
bad request (it becomes a `TtsFailure` after the last retry).

Server API (FunAudioLLM/CosyVoice `runtime/python/fastapi/server.py`, default port 50000); every
endpoint takes form fields (FastAPI `Form()`/`File()`; httpx sends multipart/form-data when a
prompt clip is uploaded, urlencoded otherwise, and FastAPI reads both) and answers with
headerless little-endian int16 mono PCM at the model's rate (22050 Hz for CosyVoice-300M*,
24000 Hz for CosyVoice2; some forks send it in an `X-Custom-Header-sampleRate` header, which wins
over `sample_rate_hz` when present):

    request has                          endpoint                 form fields
    prompt_wav + prompt_text             /inference_zero_shot     tts_text, prompt_text, prompt_wav
    prompt_wav, no prompt_text           /inference_cross_lingual tts_text, prompt_wav
    prompt_wav + style (use_instruct)    /inference_instruct2     tts_text, instruct_text, prompt_wav
    engine_voice (speaker id)            /inference_sft           tts_text, spk_id
    engine_voice + style (use_instruct)  /inference_instruct      tts_text, spk_id, instruct_text

"style" means any of instruction / emotion / speaking_rate / pitch / dialect is set. instruct_text
is `Style.instruction` when given, else an English sentence built from the other fields
(`instruct_text()`); the servers take no rate or pitch parameter, so those reach the model only
through that sentence. Servers that load a model without instruct support (CosyVoice-300M-SFT)
fail instruct calls: build the backend with `use_instruct=False` to drop style for them.

Retries: connection errors, timeouts, HTTP 5xx and 429 are retried `retries` times, sleeping
`backoff_s * 2**attempt`; other 4xx, unreadable prompt clips and empty audio fail at once.
`retries_used` counts retries over the backend's life; `last_batch` holds per-batch counters.
The retry loop is ours, not the transport's: httpx's `HTTPTransport(retries=)` retries only failed
connects, and the loop frees the in-flight slot while it backs off.
"""

from __future__ import annotations

import json
import posixpath
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np

from minmo.io.fs import read_source
from minmo.tts.base import Style, Synthesized, TtsFailure, TtsRequest
from schemas.quarantine import Rejected

TTS_FAILED = "tts_failed"  # schemas.quarantine.ReasonCode.TTS_FAILED
SUPPORTED_APIS = ("cosyvoice",)
RATE_HEADER = "X-Custom-Header-sampleRate"
UPLOAD_CONTENT_TYPE = "application/octet-stream"  # prompt clips are sent as opaque bytes
PROMPT_CACHE_SIZE = 64  # prompt clips are reused across many lines of one speaker


@dataclass
class BatchStats:
    """Counters for one `synthesize` call."""

    requests: int = 0
    ok: int = 0
    failed: int = 0
    retries: int = 0
    wall_s: float = 0.0
    audio_s: float = 0.0
    by_endpoint: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FormCall:
    """One server call: endpoint path, text form fields, and file uploads (name -> (filename,
    bytes))."""

    endpoint: str
    fields: dict[str, str]
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)


class _Retryable(Exception):
    """A failure worth another attempt (connection, timeout, 5xx, 429)."""


class _Fatal(Exception):
    """A failure no retry can fix (4xx, bad prompt clip, empty answer)."""


class HttpTtsBackend:
    """Client for a remote TTS server; one instance per Ray actor, thread-safe."""

    name = "http"

    def __init__(
        self,
        base_url: str,
        api: str = "cosyvoice",
        max_in_flight: int = 4,
        retries: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 60.0,
        sample_rate_hz: int = 22050,
        use_instruct: bool = True,
        default_spk_id: str | None = None,
    ) -> None:
        if api not in SUPPORTED_APIS:
            raise ValueError(f"api={api!r} is not supported; use one of {SUPPORTED_APIS}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight}: must be at least 1")
        if retries < 0:
            raise ValueError(f"retries={retries}: must be 0 or more")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r}: give it as http://host:port")
        self.base_url = base_url.rstrip("/")
        self.api = api
        self.max_in_flight = max_in_flight
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.sample_rate_hz = sample_rate_hz
        self.use_instruct = use_instruct
        self.default_spk_id = default_spk_id
        self.retries_used = 0
        self.last_batch = BatchStats()
        # Held only around a network attempt, never during backoff, so concurrent synthesize
        # calls on one backend still respect the server's max_in_flight.
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.Lock()
        self._prompts: OrderedDict[str, bytes] = OrderedDict()
        # One pooled client for all threads (httpx clients are thread-safe): connections are kept
        # alive across requests. Redirects are followed as urllib did; proxies come from the
        # environment as with any client.
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=True)

    # -- request building --------------------------------------------------------------------

    def plan(self, request: TtsRequest) -> FormCall:
        """The endpoint and form for one request; raises `_Fatal` when it cannot be sent."""
        voice, style = request.voice, request.style
        instruct = instruct_text(style) if self.use_instruct else None
        text = {"tts_text": request.text}
        if voice.prompt_wav:
            upload = {"prompt_wav": (_basename(voice.prompt_wav), self._prompt(voice.prompt_wav))}
            if instruct:
                return FormCall("/inference_instruct2", {**text, "instruct_text": instruct}, upload)
            if voice.prompt_text:
                fields = {**text, "prompt_text": voice.prompt_text}
                return FormCall("/inference_zero_shot", fields, upload)
            return FormCall("/inference_cross_lingual", text, upload)
        spk_id = voice.engine_voice or self.default_spk_id
        if not spk_id:
            raise _Fatal(
                "voice has neither prompt_wav nor engine_voice (a server speaker id); "
                "set one, or build the backend with default_spk_id"
            )
        if instruct:
            fields = {**text, "spk_id": spk_id, "instruct_text": instruct}
            return FormCall("/inference_instruct", fields)
        return FormCall("/inference_sft", {**text, "spk_id": spk_id})

    def _prompt(self, location: str) -> bytes:
        with self._lock:
            if location in self._prompts:
                self._prompts.move_to_end(location)
                return self._prompts[location]
        try:
            data = read_source(location, {})
        except (Rejected, ValueError) as exc:
            raise _Fatal(f"cannot read prompt_wav {location!r}: {exc}") from exc
        if not data:
            raise _Fatal(f"prompt_wav {location!r} is empty")
        with self._lock:
            self._prompts[location] = data
            while len(self._prompts) > PROMPT_CACHE_SIZE:
                self._prompts.popitem(last=False)
        return data

    # -- synthesis ---------------------------------------------------------------------------

    def synthesize(self, requests: Sequence[TtsRequest]) -> list[Synthesized | TtsFailure]:
        stats = BatchStats(requests=len(requests))
        start = time.monotonic()
        if not requests:
            self.last_batch = stats
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_in_flight, len(requests))) as pool:
            outcomes = list(pool.map(self._one, requests))
        results: list[Synthesized | TtsFailure] = []
        for result, endpoint, retries in outcomes:
            results.append(result)
            stats.retries += retries
            if endpoint:
                stats.by_endpoint[endpoint] = stats.by_endpoint.get(endpoint, 0) + 1
            if isinstance(result, Synthesized):
                stats.ok += 1
                stats.audio_s += result.duration_s
            else:
                stats.failed += 1
        stats.wall_s = time.monotonic() - start
        self.last_batch = stats
        return results

    def _one(self, request: TtsRequest) -> tuple[Synthesized | TtsFailure, str | None, int]:
        """(result, endpoint used, retries spent) for one request; never raises."""
        if not request.text.strip():
            return TtsFailure(TTS_FAILED, f"{request.key}: empty text"), None, 0
        try:
            call = self.plan(request)
        except _Fatal as exc:
            return TtsFailure(TTS_FAILED, f"{request.key}: {exc}"), None, 0
        retries = 0
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
                retries += 1
                with self._lock:
                    self.retries_used += 1
            try:
                pcm, rate = self._post(call)
            except _Retryable as exc:
                last = str(exc)
                continue
            except _Fatal as exc:
                return (
                    TtsFailure(TTS_FAILED, f"{request.key}: {call.endpoint}: {exc}"),
                    None,
                    retries,
                )
            samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
            return Synthesized(samples=samples, sample_rate_hz=rate), call.endpoint, retries
        detail = f"{request.key}: {call.endpoint}: gave up after {self.retries} retries: {last}"
        return TtsFailure(TTS_FAILED, detail), None, retries

    def _post(self, call: FormCall) -> tuple[bytes, int]:
        """One attempt: (PCM bytes, sample rate), or `_Retryable` / `_Fatal`."""
        files = {name: (*upload, UPLOAD_CONTENT_TYPE) for name, upload in call.files.items()}
        with self._slots:
            try:
                response = self._client.post(
                    self.base_url + call.endpoint, data=call.fields, files=files
                )
            except httpx.TimeoutException as exc:
                raise _Retryable(f"timed out: {exc}") from exc
            except httpx.RequestError as exc:
                raise _Retryable(f"connection error: {exc}") from exc
        if not response.is_success:
            failure = f"HTTP {response.status_code}: {_error_text(response)}"
            retryable = response.is_server_error or response.status_code == 429
            raise _Retryable(failure) if retryable else _Fatal(failure)
        pcm = response.content
        header = response.headers.get(RATE_HEADER)
        rate = int(header) if header and header.isdigit() else self.sample_rate_hz
        pcm = pcm[: len(pcm) - len(pcm) % 2]
        if not pcm:
            raise _Fatal("server answered with no audio")
        return pcm, rate


def instruct_text(style: Style) -> str | None:
    """The instruction for an instruct model: `style.instruction`, else a sentence built from the
    other style fields, else None (no style: plain sft / zero-shot)."""
    if style.instruction:
        return style.instruction
    parts: list[str] = []
    if style.emotion:
        parts.append(f"in a {style.emotion.strip().lower()} tone")
    if style.speaking_rate and abs(style.speaking_rate - 1.0) >= 0.05:
        parts.append("faster than normal" if style.speaking_rate > 1 else "slower than normal")
    if style.pitch and abs(style.pitch - 1.0) >= 0.05:
        parts.append("with a higher pitch" if style.pitch > 1 else "with a lower pitch")
    if style.dialect:
        parts.append(f"with a {style.dialect} accent")
    if not parts:
        return None
    return "Speak " + ", ".join(parts) + "."


def _basename(location: str) -> str:
    return posixpath.basename(location.split("://", 1)[-1]) or "prompt.wav"


def _error_text(response: httpx.Response) -> str:
    """FastAPI's `detail` when the error body is its JSON, else the body's start."""
    try:
        return json.dumps(response.json().get("detail", response.text))[:300]
    except (ValueError, AttributeError):
        return response.text[:300]


__all__ = ["BatchStats", "FormCall", "HttpTtsBackend", "instruct_text"]
