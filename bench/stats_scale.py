"""How `minmo stats` scales: synthetic segments/recordings tables of N rows (bench/synthetic.py),
summarised in a child process whose peak RSS and wall time are printed. Also used by tests/stats
(1M rows).

    python bench/stats_scale.py --rows 1000000 10000000 --memory-limit 1GB
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import peak_rss_mb  # noqa: E402
from synthetic import write_synthetic_build  # noqa: E402

__all__ = ["baseline_rss_mb", "measure", "write_synthetic_build"]

# The child interpreters define it from its source (they import nothing from bench/).
PEAK_RSS = inspect.getsource(peak_rss_mb)

CHILD = (
    PEAK_RSS
    + """
import json, sys, time
from pipelines.stats.compute import StatsConfig, compute_stats
t0 = time.perf_counter()
s = compute_stats(sys.argv[1], StatsConfig(out=sys.argv[2], memory_limit=sys.argv[3]), progress=False)
print(json.dumps({"peak_rss_mb": peak_rss_mb(), "seconds": time.perf_counter() - t0,
                  "segments": s["segments"]["count"], "segment_hours": s["segments"]["hours"]}))
"""
)

BASELINE = (
    PEAK_RSS
    + """
import json
import pipelines.stats.compute, duckdb
duckdb.connect().execute("SELECT 1").fetchall()
print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
"""
)


def measure(root: Path, out: Path, memory_limit: str = "1GB") -> dict[str, float]:
    """Summarise `root` in a fresh interpreter; its peak RSS and time, and what it counted."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(out), memory_limit],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def baseline_rss_mb() -> float:
    """Peak RSS of an interpreter that only imported the stats code and started DuckDB."""
    result = subprocess.run(
        [sys.executable, "-c", BASELINE], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--memory-limit", default="1GB")
    args = parser.parse_args()
    print(f"baseline (imports + DuckDB): {baseline_rss_mb():.0f} MB peak RSS")
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            truth = write_synthetic_build(Path(tmp) / "build", rows)
            made = time.perf_counter() - t0
            m = measure(Path(tmp) / "build", Path(tmp) / "out", args.memory_limit)
            print(
                f"{rows:>11,} segment rows ({truth['recordings']:,} recordings; written in "
                f"{made:.1f} s): stats in {m['seconds']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MB, "
                f"{rows / m['seconds']:,.0f} rows/s"
            )


if __name__ == "__main__":
    main()
