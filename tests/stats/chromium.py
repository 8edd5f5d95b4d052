"""Open a self-contained HTML report in headless Chromium and report what rendered.

This module owns one browser session per call: Selenium's Chrome webdriver starts Debian's
`chromedriver` (package chromium-driver) and, through it, Debian's `chromium` headless on a
throwaway profile; it loads the report from its file:// URL, waits for it to render, measures every
`<figure class="plot">`, records every URL the page asked for (Chrome's performance log, i.e. the
DevTools Network events), collects uncaught exceptions and console errors (the browser log), and
saves a full-page PNG screenshot (DevTools `Page.captureScreenshot`). `RenderResult.problems()`
turns that into human-readable findings for a test to assert on.

It must not judge report content beyond the plot contract (one inline `<svg>` or `<img>` plus a
`<figcaption>` per `figure.plot`), and it must never reach the network: host names resolve to
nothing, so an external request fails fast yet is still recorded (Chrome logs it before it is
sent). The driver is always given by path, so Selenium Manager never runs and no browser or driver
is ever downloaded.

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
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

Seconds = float

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER_NAMES = ("chromedriver",)
MIN_SVG_ELEMENTS = 5
VIEWPORT_WIDTH_PX = 1280
VIEWPORT_HEIGHT_PX = 800
# Chromium's captures are bounded by its maximum texture size (16384 px on most builds); a report
# taller than this gets a screenshot of its top only, and `RenderResult.screenshot_truncated` says so.
MAX_SCREENSHOT_HEIGHT_PX = 16384
# After rendering, wait this long with no new request before measuring, so late requests
# (lazy images, script-driven fetches) are recorded too.
QUIET_PERIOD_S: Seconds = 0.3
LOG_POLL_S: Seconds = 0.05

CHROMIUM_FLAGS = (
    "--headless",
    # Containers run as root without user namespaces, so the sandbox cannot start.
    "--no-sandbox",
    "--disable-gpu",
    # /dev/shm in containers is often 64 MiB; Chromium crashes when it fills. Debian's wrapper is
    # meant to add this flag itself, but its /etc/chromium.d/dev-shm check errors in containers.
    "--disable-dev-shm-usage",
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
    js_errors: list[str]  # uncaught exceptions (the browser log's "javascript" entries)
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
    return _find("CHROMIUM", CHROMIUM_NAMES)


def find_chromedriver() -> str | None:
    """The driver: $CHROMEDRIVER if set, else `chromedriver` on PATH (Debian's chromium-driver)."""
    return _find("CHROMEDRIVER", CHROMEDRIVER_NAMES)


def _find(variable: str, names: tuple[str, ...]) -> str | None:
    if override := os.environ.get(variable):
        return shutil.which(override)
    for name in names:
        if path := shutil.which(name):
            return path
    return None


def require_chromium() -> str:
    """For tests: the Chromium binary, or skip when it or chromedriver is missing; under CI (env
    CI set) a missing one fails."""
    import pytest

    reasons = [
        _missing(variable, names, package)
        for variable, names, package, found in (
            ("CHROMIUM", CHROMIUM_NAMES, "chromium", find_chromium()),
            ("CHROMEDRIVER", CHROMEDRIVER_NAMES, "chromium-driver", find_chromedriver()),
        )
        if found is None
    ]
    if not reasons:
        return str(find_chromium())
    reason = "; ".join(reasons)
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"CI is set and {reason}", pytrace=False)
    pytest.skip(reason)


def _missing(variable: str, names: tuple[str, ...], package: str) -> str:
    if override := os.environ.get(variable):
        return f"${variable}={override!r} is not an executable on PATH or a path to one"
    return (
        f"no {names[0]} found (set ${variable}, or put one of {', '.join(names)} on PATH: "
        f"apt-get install {package})"
    )


def render_report(
    html_path: Path,
    screenshot_path: Path,
    timeout_s: Seconds = 60,
    chromium: str | None = None,
    chromedriver: str | None = None,
) -> RenderResult:
    """Load `html_path` in headless Chromium, measure its plots, save a full-page screenshot.

    Raises ChromiumError when Chromium or chromedriver is missing, fails to start, cannot load the
    file, or the whole session takes longer than `timeout_s`; the message ends with the tail of
    chromedriver's log (which carries Chromium's stderr). The browser, the driver and the temporary
    profile are removed whatever happens.
    """
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise ChromiumError(f"no report at {html_path}")
    chromium = chromium or find_chromium()
    if chromium is None:
        raise ChromiumError("no Chromium found: set $CHROMIUM or apt-get install chromium")
    chromedriver = chromedriver or find_chromedriver()
    if chromedriver is None:
        raise ChromiumError(
            "no chromedriver found: set $CHROMEDRIVER or apt-get install chromium-driver"
        )
    with _Browser(chromium, chromedriver, timeout_s) as browser:
        return browser.render(html_path, Path(screenshot_path))


class _Browser:
    """One chromedriver (and the Chromium it starts) on a temporary profile, with a deadline.

    Selenium's calls block and take no overall deadline, so a watchdog thread kills the driver's
    process group when `timeout_s` runs out, and again every `LOG_POLL_S` until the session is
    closed (the driver may not have been spawned yet): the pending call then fails, and the
    failure is reported as a timeout naming what was being waited for.
    """

    def __init__(self, chromium: str, chromedriver: str, timeout_s: Seconds) -> None:
        self.chromium = chromium
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.profile = Path(tempfile.mkdtemp(prefix="minmo-chromium-"))
        self.log_path = self.profile / "chromedriver.log"
        self.service = Service(
            executable_path=chromedriver,  # given, so Selenium Manager never runs
            service_args=["--enable-chrome-logs", "--log-level=WARNING"],  # + Chromium's stderr
            log_output=str(self.log_path),
            # Own process group, so Chromium and its renderer/zygote/utility children go down
            # with the driver.
            popen_kw={"start_new_session": True},
        )
        self.driver: webdriver.Chrome | None = None
        self.waiting_for = "chromedriver and Chromium to start"
        self.expired = threading.Event()
        self.closed = threading.Event()
        self.watchdog = threading.Timer(timeout_s, self._expire)
        self.watchdog.daemon = True
        self.events: list[dict[str, Any]] = []  # DevTools Network events, in order

    def __enter__(self) -> _Browser:
        self.watchdog.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.closed.set()
        self.watchdog.cancel()
        if self.driver is not None:
            with contextlib.suppress(Exception):
                self.driver.quit()
        with contextlib.suppress(Exception):
            self.service.stop()
        self._kill()
        # Chromium's children can still be writing into the profile for a moment.
        for _ in range(10):
            shutil.rmtree(self.profile, ignore_errors=True)
            if not self.profile.exists():
                break
            time.sleep(0.1)

    # -- process and deadline --------------------------------------------------------------------

    def _expire(self) -> None:
        self.expired.set()
        while not self.closed.is_set():
            self._kill()
            self.closed.wait(LOG_POLL_S)

    def _kill(self) -> None:
        """SIGKILL whatever of the driver's process group is left (Chromium included)."""
        process = getattr(self.service, "process", None)
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                process.wait(5)

    def _next(self, waiting_for: str) -> None:
        """Start waiting for `waiting_for`, unless the deadline passed in the previous wait."""
        if self.expired.is_set() or time.monotonic() >= self.deadline:
            raise self._timeout()
        self.waiting_for = waiting_for

    def _timeout(self) -> ChromiumError:
        return self._error(f"timed out after {self.timeout_s:g} s waiting for {self.waiting_for}")

    def _error(self, message: str) -> ChromiumError:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        # A container has no D-Bus, and Chromium says so dozens of times; those lines hide the
        # ones that explain a failure.
        tail = "\n".join([line for line in lines if "dbus" not in line.lower()][-40:]) or "(empty)"
        return ChromiumError(
            f"chromium ({self.chromium}) {message}\n--- chromedriver/chromium stderr tail ---\n{tail}"
        )

    # -- the report ------------------------------------------------------------------------------

    def render(self, html_path: Path, screenshot_path: Path) -> RenderResult:
        try:
            return self._render(html_path, screenshot_path)
        except ChromiumError:
            raise
        except Exception as error:  # Selenium's, urllib3's once the watchdog killed the driver
            if self.expired.is_set():
                raise self._timeout() from error
            raise self._error(f"failed waiting for {self.waiting_for}: {error}") from error

    def _render(self, html_path: Path, screenshot_path: Path) -> RenderResult:
        self.driver = driver = webdriver.Chrome(options=self._options(), service=self.service)
        self._next("the viewport")
        self._set_viewport(VIEWPORT_WIDTH_PX, VIEWPORT_HEIGHT_PX)
        driver.get_log("performance")  # the start page's events are not the report's
        driver.get_log("browser")
        url = html_path.as_uri()
        self._next("the report's load event")
        driver.get(url)

        # Grow the viewport to the whole page so lazy content loads and lays out as in the
        # screenshot; the page's height can change with it, so measure again afterwards.
        self._next("the report to render")
        self._evaluate(_SETTLE_JS)
        size = self._evaluate(_PAGE_SIZE_JS)
        width = max(VIEWPORT_WIDTH_PX, size["width"])
        self._set_viewport(width, min(max(1, size["height"]), MAX_SCREENSHOT_HEIGHT_PX))
        self._evaluate(_SETTLE_JS)
        self._next("the page to go quiet")
        self._drain_network(QUIET_PERIOD_S)
        self._next("the plots to be measured")
        size = self._evaluate(_PAGE_SIZE_JS)
        measured = self._evaluate(_MEASURE_JS)

        self._next("the screenshot")
        shot_height = min(size["height"], MAX_SCREENSHOT_HEIGHT_PX)
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": shot_height, "scale": 1},
            },
        )
        screenshot_path.parent.mkdir(parents=True, exist_ok=True)
        screenshot_path.write_bytes(base64.b64decode(shot["data"]))
        self._next("the logs")
        self._drain_network(0)
        return self._result(url, measured, size, screenshot_path)

    def _options(self) -> webdriver.ChromeOptions:
        options = webdriver.ChromeOptions()
        options.binary_location = self.chromium
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={self.profile / 'user-data'}"):
            options.add_argument(flag)
        # "performance" is the DevTools Network domain's events; "browser" is the console and
        # uncaught exceptions.
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        options.add_experimental_option(
            "perfLoggingPrefs", {"enableNetwork": True, "enablePage": False}
        )
        milliseconds = int(self.timeout_s * 1000)
        options.timeouts = {"pageLoad": milliseconds, "script": milliseconds}
        # The driver listens on localhost: never send its commands through $HTTP(S)_PROXY. The
        # switch is deprecated in favour of a ClientConfig, which webdriver.Chrome does not take.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            options.ignore_local_proxy_environment_variables()
        return options

    def _evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page; a promise is awaited."""
        assert self.driver is not None
        # `return` then a line break would return undefined: the expression starts on its line.
        return self.driver.execute_script("return " + expression.strip())

    def _set_viewport(self, width: int, height: int) -> None:
        assert self.driver is not None
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def _drain_network(self, quiet_s: Seconds) -> None:
        """Collect Network events until no request has started for `quiet_s` (0: once)."""
        assert self.driver is not None
        last_request = time.monotonic()
        while True:
            for entry in self.driver.get_log("performance"):
                event = json.loads(entry["message"])["message"]
                if event["method"].startswith("Network."):
                    self.events.append(event)
                if event["method"] == "Network.requestWillBeSent":
                    last_request = time.monotonic()
            if time.monotonic() - last_request >= quiet_s:
                return
            time.sleep(LOG_POLL_S)

    def _result(
        self, url: str, measured: dict[str, Any], size: dict[str, int], screenshot: Path
    ) -> RenderResult:
        assert self.driver is not None
        requests, failed = [], []
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
        # Chrome's browser log: "javascript" entries are uncaught exceptions, "console-api"
        # SEVERE entries are console.error / console.assert ("network" ones repeat failed requests).
        logged = self.driver.get_log("browser")
        return RenderResult(
            url=url,
            title=measured["title"],
            figures=[FigureInfo(**figure) for figure in measured["figures"]],
            requests=requests,
            failed_requests=failed,
            js_errors=[e["message"] for e in logged if e.get("source") == "javascript"],
            console_errors=[
                e["message"]
                for e in logged
                if e.get("source") == "console-api" and e.get("level") == "SEVERE"
            ],
            screenshot=screenshot,
            page_width_px=size["width"],
            page_height_px=size["height"],
            screenshot_truncated=size["height"] > MAX_SCREENSHOT_HEIGHT_PX,
        )
