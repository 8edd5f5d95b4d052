"""Open a self-contained HTML report in headless Chromium and report what rendered.

This module owns one browser session per call: start Debian's `chromium` headless on a throwaway
profile, drive it over the Chrome DevTools Protocol (CDP) with `websockets`' sync client, load the
report from its file:// URL, wait for it to render, measure every `<figure class="plot">`, record
every URL the page asked for, and save a full-page PNG screenshot. `RenderResult.problems()` turns
that into human-readable findings for a test to assert on.

It must not judge report content beyond the plot contract (one inline `<svg>` or `<img>` plus a
`<figcaption>` per `figure.plot`), and it must never reach the network: host names resolve to
nothing, so an external request fails fast yet is still recorded (CDP reports it before it is sent).

It is a test helper, not a test module and not part of the `minmo` package. Use:

    result = render_report(Path("report.html"), tmp_path / "report.png")
    assert not result.problems(), "\\n".join(result.problems())
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import websockets.sync.client

Seconds = float

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
MIN_SVG_ELEMENTS = 5
VIEWPORT_WIDTH_PX = 1280
VIEWPORT_HEIGHT_PX = 800
# Chromium's captures are bounded by its maximum texture size (16384 px on most builds); a report
# taller than this gets a screenshot of its top only, and `RenderResult.screenshot_truncated` says so.
MAX_SCREENSHOT_HEIGHT_PX = 16384
# After rendering, wait this long with no new request before measuring, so late requests
# (lazy images, script-driven fetches) are recorded too.
QUIET_PERIOD_S: Seconds = 0.3

CHROMIUM_FLAGS = (
    "--headless",
    # Containers run as root without user namespaces, so the sandbox cannot start.
    "--no-sandbox",
    "--disable-gpu",
    # /dev/shm in containers is often 64 MiB; Chromium crashes when it fills. Debian's wrapper is
    # meant to add this flag itself, but its /etc/chromium.d/dev-shm check errors in containers.
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-crash-reporter",
    "--disable-breakpad",
    "--mute-audio",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    f"--window-size={VIEWPORT_WIDTH_PX},{VIEWPORT_HEIGHT_PX}",
    # Hermetic: no host name resolves, so no request leaves the machine and none waits on DNS.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
)

# JavaScript run in the page once it has rendered. "Drawn" SVG elements are those outside
# <defs>/<clipPath>/... (matplotlib keeps glyphs and markers there and draws them with <use>).
_MEASURE_JS = """
(() => {
  const DRAWN = 'path,rect,line,polyline,polygon,circle,ellipse,text,use,image';
  const NOT_DRAWN = 'defs,clipPath,marker,mask,pattern,symbol';
  const figures = [...document.querySelectorAll('figure.plot')].map(fig => {
    const svg = fig.querySelector('svg');
    const img = svg ? null : fig.querySelector('img');
    const el = svg || img;
    const box = el ? el.getBoundingClientRect() : null;
    const caption = fig.querySelector('figcaption');
    return {
      id: fig.id,
      kind: svg ? 'svg' : (img ? 'img' : null),
      width_px: box ? box.width : 0,
      height_px: box ? box.height : 0,
      drawn_elements: svg
        ? [...svg.querySelectorAll(DRAWN)].filter(e => !e.parentElement.closest(NOT_DRAWN)).length
        : null,
      natural_width_px: img ? img.naturalWidth : null,
      img_complete: img ? img.complete : null,
      caption: caption ? caption.textContent.trim() : null,
    };
  });
  return {title: document.title, figures};
})()
"""
_PAGE_SIZE_JS = """
(() => {
  const d = document.documentElement, b = document.body;
  return {
    width: Math.ceil(Math.max(d.scrollWidth, b ? b.scrollWidth : 0)),
    height: Math.ceil(Math.max(d.scrollHeight, b ? b.scrollHeight : 0)),
  };
})()
"""
# Fonts loaded, images decoded, then two animation frames so layout and paint have run.
_SETTLE_JS = """
Promise.all([
  document.fonts.ready,
  ...[...document.images].map(img => img.decode().catch(() => null)),
]).then(() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => done(true)))))
"""


class ChromiumError(RuntimeError):
    """Chromium could not be started, driven, or did not answer in time."""


@dataclass(frozen=True)
class FigureInfo:
    """One `<figure class="plot">` as rendered. Sizes are CSS pixels of the svg/img box."""

    id: str
    kind: Literal["svg", "img"] | None
    width_px: float
    height_px: float
    drawn_elements: int | None  # svg only
    natural_width_px: int | None  # img only; 0 when the image did not load
    img_complete: bool | None  # img only
    caption: str | None  # None: no <figcaption>

    def problems(self, min_svg_elements: int = MIN_SVG_ELEMENTS) -> list[str]:
        name = f"figure #{self.id}" if self.id else "figure without id"
        if self.kind is None:
            found = [f"{name}: has neither an <svg> nor an <img>"]
        else:
            found = []
            if self.width_px <= 0 or self.height_px <= 0:
                found.append(
                    f"{name}: {self.kind} box is {self.width_px:g}x{self.height_px:g} px (zero size)"
                )
            if self.kind == "svg" and (self.drawn_elements or 0) < min_svg_elements:
                found.append(
                    f"{name}: svg draws {self.drawn_elements} elements (< {min_svg_elements})"
                )
            if self.kind == "img" and not (self.img_complete and self.natural_width_px):
                found.append(
                    f"{name}: img not loaded (complete={self.img_complete}, "
                    f"naturalWidth={self.natural_width_px})"
                )
        if self.caption is None:
            found.append(f"{name}: no <figcaption>")
        elif not self.caption:
            found.append(f"{name}: empty <figcaption>")
        return found


@dataclass
class RenderResult:
    """What Chromium saw when it opened one report."""

    url: str  # the report's own file:// URL
    title: str
    figures: list[FigureInfo]
    requests: list[str]  # every Network.requestWillBeSent URL from navigation on, in order
    failed_requests: list[tuple[str, str]]  # (url, Chromium's errorText) per Network.loadingFailed
    js_errors: list[str]  # uncaught exceptions (Runtime.exceptionThrown)
    screenshot: Path
    page_width_px: int
    page_height_px: int
    screenshot_truncated: bool = False  # page taller than MAX_SCREENSHOT_HEIGHT_PX
    console_errors: list[str] = field(default_factory=list)  # console.error / console.assert

    @property
    def external_requests(self) -> list[str]:
        """Requests for anything but the report itself or inline data (data:, blob:)."""
        own = self.url.split("#", 1)[0]
        return [
            url
            for url in self.requests
            if url.split("#", 1)[0] != own and not url.startswith(("data:", "blob:"))
        ]

    def problems(self, min_svg_elements: int = MIN_SVG_ELEMENTS) -> list[str]:
        found = []
        if not self.figures:
            found.append("no <figure class='plot'> in the page")
        ids = [f.id for f in self.figures if f.id]
        found += [
            f"figure id {i!r} is used {ids.count(i)} times"
            for i in sorted(set(ids))
            if ids.count(i) > 1
        ]
        for figure in self.figures:
            found += figure.problems(min_svg_elements)
        found += [f"external request: {url}" for url in self.external_requests]
        found += [f"JavaScript error: {message}" for message in self.js_errors]
        return found


def find_chromium() -> str | None:
    """The Chromium binary: $CHROMIUM if set, else the first of CHROMIUM_NAMES on PATH."""
    if override := os.environ.get("CHROMIUM"):
        return shutil.which(override)
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


def require_chromium() -> str:
    """For tests: the Chromium binary, or skip; under CI (env CI set) a missing one fails."""
    import pytest

    if path := find_chromium():
        return path
    if override := os.environ.get("CHROMIUM"):
        reason = f"$CHROMIUM={override!r} is not an executable on PATH or a path to one"
    else:
        reason = (
            f"no Chromium found (set $CHROMIUM, or put one of {', '.join(CHROMIUM_NAMES)} on "
            "PATH: apt-get install chromium)"
        )
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"CI is set and {reason}", pytrace=False)
    pytest.skip(reason)


def render_report(
    html_path: Path,
    screenshot_path: Path,
    timeout_s: Seconds = 60,
    chromium: str | None = None,
) -> RenderResult:
    """Load `html_path` in headless Chromium, measure its plots, save a full-page screenshot.

    Raises ChromiumError when Chromium is missing, fails to start, cannot load the file, or the
    whole session takes longer than `timeout_s`; the message ends with Chromium's stderr tail.
    The browser and its temporary profile are removed whatever happens.
    """
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise ChromiumError(f"no report at {html_path}")
    chromium = chromium or find_chromium()
    if chromium is None:
        raise ChromiumError("no Chromium found: set $CHROMIUM or apt-get install chromium")
    with _Browser(chromium, timeout_s) as browser:
        return browser.render(html_path, Path(screenshot_path))


class _Browser:
    """One Chromium process on a temporary profile, and a CDP session with its page target."""

    def __init__(self, chromium: str, timeout_s: Seconds) -> None:
        self.chromium = chromium
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.profile = Path(tempfile.mkdtemp(prefix="minmo-chromium-"))
        self.stderr_path = self.profile / "chromium.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws: websockets.sync.client.ClientConnection | None = None
        self.ws_context = contextlib.ExitStack()
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> _Browser:
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    # -- process -------------------------------------------------------------------------------

    def _start(self) -> None:
        # The profile directory holds only Chromium's own files; its stderr goes beside it.
        user_data = self.profile / "user-data"
        user_data.mkdir()
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [self.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={user_data}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                # Own process group, so renderer/zygote/utility children go down with it.
                start_new_session=True,
            )
        port_file = user_data / "DevToolsActivePort"
        port = self._poll("DevToolsActivePort", lambda: _read_port(port_file))
        ws_url = self._poll("a page target", lambda: _page_target(port))
        try:
            connection = websockets.sync.client.connect(
                ws_url,
                open_timeout=self._remaining("the DevTools websocket"),
                close_timeout=1,
                max_size=None,  # full-page screenshots arrive as one large base64 message
                ping_interval=None,
                proxy=None,  # the DevTools port is local; never route it via $HTTP(S)_PROXY
            )
            # websockets 17 wants connect() used as a context manager; the stack is closed in _stop.
            self.ws = self.ws_context.enter_context(connection)
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as error:
            raise self._error(f"could not connect to {ws_url}: {error}") from error

    def _stop(self) -> None:
        self.ws_context.close()
        self.ws = None
        if self.proc is not None:
            # SIGTERM lets Chromium exit cleanly; SIGKILL then takes whatever of its process
            # group (renderers, zygote, utilities) is left, whether or not the browser obliged.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
        # Chromium's children can still be writing into the profile for a moment.
        for _ in range(10):
            shutil.rmtree(self.profile, ignore_errors=True)
            if not self.profile.exists():
                break
            time.sleep(0.1)

    def _remaining(self, waiting_for: str) -> Seconds:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._error(f"timed out after {self.timeout_s:g} s waiting for {waiting_for}")
        return left

    def _poll(self, waiting_for: str, attempt: Callable[[], Any]) -> Any:
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise self._error(
                    f"exited with code {self.proc.returncode} while we waited for {waiting_for}"
                )
            if (value := attempt()) is not None:
                return value
            self._remaining(waiting_for)
            time.sleep(0.05)

    def _error(self, message: str) -> ChromiumError:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        # A container has no D-Bus, and Chromium says so dozens of times; those lines hide the
        # ones that explain a failure.
        tail = "\n".join([line for line in lines if "dbus" not in line.lower()][-40:]) or "(empty)"
        return ChromiumError(
            f"chromium ({self.chromium}) {message}\n--- chromium stderr tail ---\n{tail}"
        )

    # -- CDP -----------------------------------------------------------------------------------

    def _receive(self, waiting_for: str, timeout_s: Seconds | None = None) -> dict[str, Any]:
        assert self.ws is not None
        wait_s = self._remaining(waiting_for)
        if timeout_s is not None:
            wait_s = min(wait_s, timeout_s)
        try:
            message = json.loads(self.ws.recv(timeout=wait_s))
        except TimeoutError:
            if timeout_s is not None:
                raise
            raise self._error(
                f"timed out after {self.timeout_s:g} s waiting for {waiting_for}"
            ) from None
        except websockets.exceptions.ConnectionClosed as error:
            raise self._error(
                f"closed the DevTools connection ({error}) during {waiting_for}"
            ) from error
        if "method" in message:
            self.events.append(message)
        return message

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a CDP method and wait for its result; events meanwhile are kept in self.events."""
        assert self.ws is not None
        self.next_id += 1
        call_id = self.next_id
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = self._receive(method)
            if message.get("id") == call_id:
                if "error" in message:
                    raise self._error(f"{method} failed: {message['error']}")
                return message.get("result", {})

    def wait_event(
        self,
        method: str,
        since: int,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
        describe: str = "",
    ) -> dict[str, Any]:
        """The first `method` event at index >= `since` whose params pass `where`, waiting for it."""
        while True:
            for event in self.events[since:]:
                if event["method"] == method and where(event.get("params", {})):
                    return event
            since = len(self.events)
            self._receive(f"{method} ({describe})")

    def drain(self, quiet_s: Seconds) -> None:
        """Keep receiving until no network request has started for `quiet_s`."""
        last_request = time.monotonic()
        while (left := last_request + quiet_s - time.monotonic()) > 0:
            try:
                message = self._receive("the page to go quiet", timeout_s=left)
            except TimeoutError:
                return
            if message.get("method") == "Network.requestWillBeSent":
                last_request = time.monotonic()

    def drain_queued(self) -> None:
        """Receive whatever has already arrived, without waiting."""
        while True:
            try:
                self._receive("queued events", timeout_s=0)
            except TimeoutError:
                return

    def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        result = self.send(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=await_promise,
        )
        if "exceptionDetails" in result:
            raise self._error(f"page script failed: {_exception_text(result['exceptionDetails'])}")
        return result["result"].get("value")

    # -- the report ----------------------------------------------------------------------------

    def render(self, html_path: Path, screenshot_path: Path) -> RenderResult:
        url = html_path.as_uri()
        self.send("Network.enable")
        self.send("Page.enable")
        self.send("Page.setLifecycleEventsEnabled", enabled=True)
        self.send("Runtime.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=VIEWPORT_WIDTH_PX,
            height=VIEWPORT_HEIGHT_PX,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.events.clear()  # about:blank's events are not the report's
        navigation = self.send("Page.navigate", url=url)
        if error_text := navigation.get("errorText"):
            raise self._error(f"could not load {url}: {error_text}")
        # The "load" lifecycle event of this navigation's loader, rather than Page.loadEventFired,
        # which names no document and could still be about:blank's.
        self.wait_event(
            "Page.lifecycleEvent",
            since=0,
            where=lambda e: e["name"] == "load" and e["loaderId"] == navigation.get("loaderId"),
            describe="the report's load event",
        )

        # Grow the viewport to the whole page so lazy content loads and lays out as in the
        # screenshot; the page's height can change with it, so measure again afterwards.
        self.evaluate(_SETTLE_JS, await_promise=True)
        size = self.evaluate(_PAGE_SIZE_JS)
        width = max(VIEWPORT_WIDTH_PX, size["width"])
        height = min(max(1, size["height"]), MAX_SCREENSHOT_HEIGHT_PX)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.evaluate(_SETTLE_JS, await_promise=True)
        self.drain(QUIET_PERIOD_S)
        size = self.evaluate(_PAGE_SIZE_JS)
        measured = self.evaluate(_MEASURE_JS)

        shot_height = min(size["height"], MAX_SCREENSHOT_HEIGHT_PX)
        shot = self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": shot_height, "scale": 1},
        )
        screenshot_path.parent.mkdir(parents=True, exist_ok=True)
        screenshot_path.write_bytes(base64.b64decode(shot["data"]))
        self.drain_queued()
        return self._result(url, measured, size, screenshot_path)

    def _result(
        self, url: str, measured: dict[str, Any], size: dict[str, int], screenshot: Path
    ) -> RenderResult:
        requests, failed, js_errors, console_errors = [], [], [], []
        url_by_id: dict[str, str] = {}
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Network.requestWillBeSent":
                url_by_id[params["requestId"]] = params["request"]["url"]
                requests.append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                failed.append(
                    (url_by_id.get(params["requestId"], "?"), params.get("errorText", ""))
                )
            elif method == "Runtime.exceptionThrown":
                js_errors.append(_exception_text(params["exceptionDetails"]))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                console_errors.append(
                    " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
                )
        return RenderResult(
            url=url,
            title=measured["title"],
            figures=[FigureInfo(**figure) for figure in measured["figures"]],
            requests=requests,
            failed_requests=failed,
            js_errors=js_errors,
            console_errors=console_errors,
            screenshot=screenshot,
            page_width_px=size["width"],
            page_height_px=size["height"],
            screenshot_truncated=size["height"] > MAX_SCREENSHOT_HEIGHT_PX,
        )


def _read_port(port_file: Path) -> int | None:
    # Chromium writes "PORT\n/devtools/browser/<id>"; it may be caught half-written.
    try:
        first_line = port_file.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first_line) if first_line.isdigit() else None


def _page_target(port: int) -> str | None:
    """The websocket URL of the about:blank page target, once Chromium lists it."""
    # An empty ProxyHandler: never send the local DevTools request through $http_proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
            targets = json.load(response)
    except (OSError, ValueError):
        return None
    # Headless Chromium also lists browser_ui targets (omnibox popup); only a "page" will do.
    for target in targets:
        if target.get("type") == "page" and "webSocketDebuggerUrl" in target:
            return target["webSocketDebuggerUrl"]
    return None


def _exception_text(details: dict[str, Any]) -> str:
    exception = details.get("exception", {})
    return exception.get("description") or details.get("text", "unknown error")
