"""A million synthetic segment rows summarised within bounded memory, in a child process whose
peak RSS is measured (bench/stats_scale.py prints the same for 10M rows)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEAK_RSS_BOUND_MB = 400  # measured (VmHWM): 217 MB at 1M rows, 266 MB at 10M (DuckDB limit 1GB)


def _bench():
    spec = importlib.util.spec_from_file_location("stats_scale", ROOT / "bench/stats_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_million_segment_rows_in_bounded_memory(tmp_path):
    bench = _bench()
    truth = bench.write_synthetic_build(tmp_path / "build", 1_000_000)
    measured = bench.measure(tmp_path / "build", tmp_path / "out", memory_limit="1GB")
    print(
        f"1M segment rows: peak RSS {measured['peak_rss_mb']:.0f} MB in {measured['seconds']:.1f} s"
    )
    assert measured["segments"] == 1_000_000
    assert measured["segment_hours"] == pytest.approx(truth["segment_hours"], rel=1e-6)
    assert measured["peak_rss_mb"] < PEAK_RSS_BOUND_MB
