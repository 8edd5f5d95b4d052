"""Tests for the headless-Chromium report harness (tests/stats/chromium.py) on hand-written pages.

Selenium and chromedriver are trusted to drive the browser; these test what the harness adds: the
plot measurements, the request and error records, the full-page screenshot and the deadline. Each
browser test starts chromedriver and Chromium once (about 2-4 s). Without them they skip, except
under CI (env CI set), where a missing one fails.
"""

from __future__ import annotations

import base64
import io
import struct
import tempfile
import time
import zlib
from pathlib import Path

import pytest

from tests.stats.chromium import (
    ChromiumError,
    FigureInfo,
    RenderResult,
    render_report,
    require_chromium,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_png(width: int = 8, height: int = 6) -> bytes:
    """A valid RGB PNG with a gradient, built by hand (no imaging library needed)."""
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 30 % 256, y * 40 % 256, 128)) for x in range(width))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_MAGIC + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC, "not a PNG"
    return struct.unpack(">II", data[16:24])


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


SVG_BARS = """<svg xmlns="http://www.w3.org/2000/svg" width="320" height="200" viewBox="0 0 320 200">
  <rect x="0" y="0" width="320" height="200" fill="white"/>
  <rect x="20" y="120" width="40" height="60" fill="steelblue"/>
  <rect x="80" y="60" width="40" height="120" fill="steelblue"/>
  <rect x="140" y="90" width="40" height="90" fill="steelblue"/>
  <line x1="10" y1="180" x2="310" y2="180" stroke="black"/>
  <text x="20" y="195" font-size="10">a</text>
</svg>"""
SVG_LINE = """<svg xmlns="http://www.w3.org/2000/svg" width="320" height="200">
  <defs><path id="dot" d="M -2 0 L 2 0"/></defs>
  <polyline points="0,150 50,100 100,120 150,40 200,60" fill="none" stroke="crimson"/>
  <use href="#dot" x="50" y="100"/><use href="#dot" x="150" y="40"/>
  <circle cx="200" cy="60" r="3"/><text x="5" y="15">loss</text>
</svg>"""


def page(title: str, body: str) -> str:
    return f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n<body>{body}</body></html>\n'


def figure(fig_id: str, content: str, caption: str | None = "A caption.") -> str:
    cap = "" if caption is None else f"<figcaption>{caption}</figcaption>"
    return f'<figure class="plot" id="{fig_id}">{content}{cap}</figure>\n'


@pytest.mark.slow
def test_good_page_has_no_problems_and_a_full_page_screenshot(tmp_path: Path) -> None:
    chromium = require_chromium()
    html = tmp_path / "report.html"
    html.write_text(
        page(
            "Good report",
            figure("bars", SVG_BARS, "Hours per language.")
            # A spacer so the page is taller than the 800 px viewport: the screenshot must not stop there.
            + '<div style="height: 1500px"></div>'
            + figure("loss", SVG_LINE, "Training loss.")
            + figure("png", f'<img src="{data_uri(tiny_png())}" width="160">', "A PNG plot."),
        )
    )
    shot = tmp_path / "shots" / "report.png"

    result = render_report(html, shot, chromium=chromium)

    assert result.problems() == []
    assert result.title == "Good report"
    assert [f.id for f in result.figures] == ["bars", "loss", "png"]
    bars, loss, png = result.figures
    assert (bars.kind, bars.width_px, bars.height_px, bars.drawn_elements) == ("svg", 320, 200, 6)
    # The <path> inside <defs> is not drawn by itself; the two <use> of it are.
    assert loss.drawn_elements == 5
    assert (png.kind, png.natural_width_px, png.img_complete, png.width_px) == ("img", 8, True, 160)
    assert png.caption == "A PNG plot."
    assert result.requests[0] == html.resolve().as_uri()
    assert result.external_requests == []

    data = shot.read_bytes()
    width_px, height_px = png_size(data)
    assert width_px == 1280 and height_px == result.page_height_px > 1500
    assert len(data) > 3000


@pytest.mark.slow
def test_external_requests_are_recorded(tmp_path: Path) -> None:
    chromium = require_chromium()
    html = tmp_path / "report.html"
    html.write_text(
        page(
            "Leaky report",
            '<link rel=stylesheet href="https://example.invalid/a.css">'
            + figure("bars", SVG_BARS)
            + figure("remote", '<img src="http://127.0.0.1:9/x.png">'),
        )
    )

    result = render_report(html, tmp_path / "leaky.png", chromium=chromium)

    assert sorted(result.external_requests) == [
        "http://127.0.0.1:9/x.png",
        "https://example.invalid/a.css",
    ]
    problems = result.problems()
    assert "external request: http://127.0.0.1:9/x.png" in problems
    assert "external request: https://example.invalid/a.css" in problems
    # The remote image never arrived, so its figure is reported as well.
    assert any(p.startswith("figure #remote: img not loaded") for p in problems)
    assert {url for url, _ in result.failed_requests} == set(result.external_requests)


@pytest.mark.slow
def test_broken_figures_are_reported(tmp_path: Path) -> None:
    chromium = require_chromium()
    html = tmp_path / "report.html"
    html.write_text(
        page(
            "Broken report",
            figure("good", SVG_BARS)
            + figure("empty-svg", "<svg></svg>")
            + figure("no-caption", SVG_LINE, caption=None)
            + figure("blank-caption", SVG_LINE, caption="  ")
            + figure("zero", '<svg width="0" height="0">' + SVG_BARS + "</svg>")
            + figure("nothing", "<p>plot failed</p>")
            + figure("bad-png", '<img src="data:image/png;base64,AAAA">')
            + '<script>console.error("plot", 3); throw new Error("boom")</script>',
        )
    )

    result = render_report(html, tmp_path / "broken.png", chromium=chromium)
    problems = result.problems()

    by_figure = {f.id: f.problems() for f in result.figures}
    assert by_figure["good"] == []
    assert by_figure["empty-svg"] == ["figure #empty-svg: svg draws 0 elements (< 5)"]
    assert by_figure["no-caption"] == ["figure #no-caption: no <figcaption>"]
    assert by_figure["blank-caption"] == ["figure #blank-caption: empty <figcaption>"]
    assert by_figure["zero"] == ["figure #zero: svg box is 0x0 px (zero size)"]
    assert by_figure["nothing"] == ["figure #nothing: has neither an <svg> nor an <img>"]
    assert by_figure["bad-png"][0].startswith("figure #bad-png: img not loaded")
    (js_error,) = result.js_errors
    assert "Uncaught Error: boom" in js_error and f"JavaScript error: {js_error}" in problems
    assert len(problems) == 7
    # console.error is recorded, not judged: the report has no scripts, so it never logs one.
    (console_error,) = result.console_errors
    assert console_error.endswith('"plot" 3')
    assert result.external_requests == []


@pytest.mark.slow
def test_matplotlib_svg_counts_as_drawn(tmp_path: Path) -> None:
    """The report embeds matplotlib SVG, which draws text through <use> of glyphs in <defs>."""
    chromium = require_chromium()
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2, 3], [3, 1, 2, 0], marker="o")
    ax.set_title("loss")
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE, as an inline svg must
    html = tmp_path / "report.html"
    html.write_text(page("matplotlib", figure("mpl", svg, "A matplotlib line plot.")))

    result = render_report(html, tmp_path / "mpl.png", chromium=chromium)

    assert result.problems() == []
    (mpl,) = result.figures
    assert mpl.drawn_elements > 20 and mpl.width_px > 200


@pytest.mark.slow
def test_timeout_names_the_wait_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chromium = require_chromium()
    html = tmp_path / "report.html"
    html.write_text(page("t", figure("bars", SVG_BARS)))
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(profiles))

    with pytest.raises(
        ChromiumError, match=r"(?s)timed out after 0\.01 s waiting for .*stderr tail"
    ):
        render_report(html, tmp_path / "t.png", timeout_s=0.01, chromium=chromium)

    assert list(profiles.iterdir()) == []
    assert not (tmp_path / "t.png").exists()
    # No process of ours still runs with the (deleted) profile on its command line.
    deadline = time.monotonic() + 3
    while (alive := _processes_mentioning(str(profiles))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive == []


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:
            continue
    return found


def test_missing_report_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ChromiumError, match="no report at"):
        render_report(tmp_path / "absent.html", tmp_path / "absent.png", chromium="/bin/false")


def test_missing_chromedriver_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Selenium Manager would download a driver; the harness names the Debian package instead."""
    html = tmp_path / "report.html"
    html.write_text(page("t", ""))
    monkeypatch.setenv("CHROMEDRIVER", str(tmp_path / "no-such-chromedriver"))
    with pytest.raises(ChromiumError, match="apt-get install chromium-driver"):
        render_report(html, tmp_path / "t.png", chromium="/bin/false")


def test_problems_without_a_browser() -> None:
    def fig(fig_id: str, **overrides: object) -> FigureInfo:
        fields = dict(
            id=fig_id,
            kind="svg",
            width_px=100,
            height_px=50,
            drawn_elements=9,
            natural_width_px=None,
            img_complete=None,
            caption="c",
        )
        return FigureInfo(**{**fields, **overrides})

    def result(figures: list[FigureInfo], requests: list[str]) -> RenderResult:
        return RenderResult(
            url="file:///r/report.html",
            title="t",
            figures=figures,
            requests=requests,
            failed_requests=[],
            js_errors=[],
            screenshot=Path("/r/shot.png"),
            page_width_px=1280,
            page_height_px=800,
        )

    assert result([], []).problems() == ["no <figure class='plot'> in the page"]
    own = [
        "file:///r/report.html",
        "file:///r/report.html#fig-2",
        "data:image/png;base64,AAAA",
        "blob:file:///abc",
    ]
    assert result([fig("a")], own).problems() == []
    leaky = result([fig("a")], [*own, "file:///r/other.png", "https://cdn.example/x.js"])
    assert leaky.external_requests == ["file:///r/other.png", "https://cdn.example/x.js"]
    assert result([fig("a"), fig("a")], []).problems() == ["figure id 'a' is used 2 times"]
    assert result([fig("a", drawn_elements=3)], []).problems(min_svg_elements=3) == []
