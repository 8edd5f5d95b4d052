"""A stand-in for CosyVoice's FastAPI TTS server, for tests and the demo (no model, no GPU).

Owns: the same endpoints and form fields as `runtime/python/fastapi/server.py` in
FunAudioLLM/CosyVoice (see `minmo.tts.http`), answering with deterministic synthetic int16 PCM: a
tone burst whose pitch depends on the speaker (spk_id or prompt clip) and whose length grows with
the text (`seconds_per_char`). It records every request (endpoint, form fields, uploaded files),
tracks how many are in flight, and can inject faults: the first `fail_first` requests, and every
`fail_every`-th one, answer HTTP 500; `delay_s` sleeps before answering. Must not: be used for
anything but tests and demos.

    with StubServer(fail_every=3) as stub:      # tests: stub.base_url, stub.requests
        ...
    with run_stub_server() as base_url:          # demo: just the URL
        ...
    python -m minmo.testing.cosyvoice_stub_server --port 50000
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import email.policy
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

# endpoint -> required form fields (text, then file uploads), as the real server declares them
ENDPOINTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "/inference_sft": (("tts_text", "spk_id"), ()),
    "/inference_zero_shot": (("tts_text", "prompt_text"), ("prompt_wav",)),
    "/inference_cross_lingual": (("tts_text",), ("prompt_wav",)),
    "/inference_instruct": (("tts_text", "spk_id", "instruct_text"), ()),
    "/inference_instruct2": (("tts_text", "instruct_text"), ("prompt_wav",)),
}


@dataclass(frozen=True)
class RecordedRequest:
    endpoint: str
    fields: dict[str, str]
    files: dict[str, bytes]
    number: int  # 1-based arrival order
    status: int  # what the stub answered


@dataclass
class StubServer:
    """The stub server; a context manager that serves on 127.0.0.1 in a background thread."""

    sample_rate_hz: int = 22050
    seconds_per_char: float = 0.02
    fail_first: int = 0
    fail_every: int = 0
    delay_s: float = 0.0
    send_rate_header: bool = False
    port: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)
    max_in_flight_seen: int = 0
    _in_flight: int = 0
    _count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stub is not running: use it as a context manager")
        host, port = self._server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}"

    def __enter__(self) -> StubServer:
        stub = self

        class Handler(_Handler):
            pass

        Handler.stub = stub
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def serve_forever(self) -> None:
        with self:
            print(f"CosyVoice stub serving on {self.base_url}", flush=True)
            assert self._thread is not None
            self._thread.join()

    # -- request handling (called from handler threads) -------------------------------------

    def _enter(self) -> int:
        with self._lock:
            self._count += 1
            self._in_flight += 1
            self.max_in_flight_seen = max(self.max_in_flight_seen, self._in_flight)
            return self._count

    def _leave(self, record: RecordedRequest) -> None:
        with self._lock:
            self._in_flight -= 1
            self.requests.append(record)

    def _should_fail(self, number: int) -> bool:
        return number <= self.fail_first or (self.fail_every > 0 and number % self.fail_every == 0)

    def render(self, fields: dict[str, str], files: dict[str, bytes]) -> bytes:
        """Deterministic int16 PCM for a request: 0.1 s lead-in, then a tone per character."""
        speaker = fields.get("spk_id", "") + str(zlib.crc32(files.get("prompt_wav", b"")))
        freq = 120.0 + zlib.crc32(speaker.encode()) % 160
        n = int(self.sample_rate_hz * (0.1 + self.seconds_per_char * len(fields["tts_text"])))
        t = np.arange(n) / self.sample_rate_hz
        wave = 0.3 * np.sin(2 * np.pi * freq * t) * np.minimum(1.0, t / 0.01)
        return (wave * 32767).astype("<i2").tobytes()


class _Handler(BaseHTTPRequestHandler):
    stub: StubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean

    def do_POST(self) -> None:  # stdlib handler name
        stub = self.stub
        endpoint = urllib.parse.urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        number = stub._enter()
        status, payload = 200, b""
        fields: dict[str, str] = {}
        files: dict[str, bytes] = {}
        try:
            fields, files = parse_form(self.headers.get("Content-Type", ""), body)
            if stub.delay_s:
                time.sleep(stub.delay_s)
            if endpoint not in ENDPOINTS:
                status, payload = 404, b'{"detail":"Not Found"}'
            elif stub._should_fail(number):
                status, payload = 500, b"Internal Server Error"
            else:
                text_names, file_names = ENDPOINTS[endpoint]
                missing = [n for n in text_names if not fields.get(n)]
                missing += [n for n in file_names if n not in files]
                if missing:
                    status, payload = 422, f'{{"detail":"missing {missing}"}}'.encode()
                else:
                    payload = stub.render(fields, files)
        finally:
            stub._leave(RecordedRequest(endpoint, fields, files, number, status))
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        if status == 200 and stub.send_rate_header:
            self.send_header("X-Custom-Header-sampleRate", str(stub.sample_rate_hz))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(payload)  # fails when the client gave up (timeout test)


def parse_form(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, bytes]]:
    """Text fields and file uploads of a multipart/form-data or urlencoded body."""
    if content_type.startswith("application/x-www-form-urlencoded"):
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        return dict(pairs), {}
    if not content_type.startswith("multipart/form-data"):
        return {}, {}
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        if part.get_filename() is not None:
            files[str(name)] = data
        else:
            fields[str(name)] = data.decode("utf-8")
    return fields, files


@contextmanager
def run_stub_server(**options: object) -> Iterator[str]:
    """Serve a `StubServer(**options)` for the duration of the block; yields its base URL."""
    with StubServer(**options) as stub:  # type: ignore[arg-type]
        yield stub.base_url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=50000)
    parser.add_argument("--sample-rate-hz", type=int, default=22050)
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--delay-s", type=float, default=0.0)
    args = parser.parse_args(argv)
    StubServer(
        port=args.port,
        sample_rate_hz=args.sample_rate_hz,
        fail_every=args.fail_every,
        delay_s=args.delay_s,
    ).serve_forever()


if __name__ == "__main__":
    main()
