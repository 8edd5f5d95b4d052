"""How `minmo stats` scales: synthetic segments/recordings tables of N rows, summarised in a
child process whose peak RSS and wall time are printed. Also used by tests/stats (1M rows).

    python bench/stats_scale.py --rows 1000000 10000000 --memory-limit 1GB
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import RECORDINGS, SEGMENTS

ROWS_PER_FILE = 250_000
SEGMENTS_PER_RECORDING = 50


def write_synthetic_build(root: Path, n_segments: int, seed: int = 0) -> dict[str, float]:
    """recordings/ and segments/ tables with `n_segments` segment rows (50 per recording), in
    Parquet parts of at most 250k rows, written chunk by chunk (never all rows at once).
    Returns the exact totals the stats must reproduce."""
    rng = np.random.default_rng(seed)
    n_rec = max(1, n_segments // SEGMENTS_PER_RECORDING)
    corpora = np.array(["fisher", "wenet", "gigaspeech", "aishell"])
    languages = np.array(["en", "zh", "de", "es", "fr"])
    rec_dur = rng.uniform(60, 1800, n_rec)
    rec_corpus = corpora[rng.integers(0, len(corpora), n_rec)]
    ids = np.array([f"rec{i:09d}" for i in range(n_rec)])
    (root / "recordings").mkdir(parents=True, exist_ok=True)
    (root / "segments").mkdir(parents=True, exist_ok=True)
    rec = pa.table(
        {
            "recording_id": ids,
            "source_uri": np.char.add("s3://corpus/", ids),
            "corpus": rec_corpus,
            "container": np.full(n_rec, "flac"),
            "sample_rate_hz": np.full(n_rec, 16000, np.int32),
            "source_channels": np.ones(n_rec, np.int16),
            "channels": np.ones(n_rec, np.int16),
            "bits": np.full(n_rec, 16, np.int16),
            "duration_s": rec_dur,
            "bytes": (rec_dur * 32000).astype(np.int64),
            "content_sha1": np.char.add("sha", ids),
            "peak_dbfs": rng.uniform(-12, 0, n_rec).astype(np.float32),
            "rms_dbfs": rng.normal(-25, 5, n_rec).astype(np.float32),
            "clipping_ratio": rng.exponential(1e-4, n_rec).astype(np.float32),
            "speech_ratio": rng.uniform(0.2, 1.0, n_rec).astype(np.float32),
            "snr_db": rng.normal(25, 8, n_rec).astype(np.float32),
            "language": languages[rng.integers(0, len(languages), n_rec)],
            "transcript": pa.nulls(n_rec, pa.string()),
            "speaker": np.char.add("spk", (np.arange(n_rec) % 5000).astype(str)),
            "task": np.full(n_rec, "asr"),
            "dup_of": pa.nulls(n_rec, pa.string()),
        }
    )
    pq.write_table(RECORDINGS.conform(rec), root / "recordings" / "part-0000.parquet")
    total_s = 0.0
    for part, start in enumerate(range(0, n_segments, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, n_segments - start)
        owner = (np.arange(start, start + n) // SEGMENTS_PER_RECORDING) % n_rec
        dur = rng.uniform(0.5, 30.0, n)
        total_s += float(dur.sum())
        begin = rng.uniform(0, 30, n)
        seg = pa.table(
            {
                "segment_id": np.char.add(ids[owner], np.char.add("-", np.arange(n).astype(str))),
                "recording_id": ids[owner],
                "channel": np.zeros(n, np.int16),
                "start_s": begin,
                "end_s": begin + dur,
                "duration_s": dur,
                "speech_prob": rng.uniform(0.5, 1.0, n).astype(np.float32),
                "origin": np.full(n, "vad"),
                "text": pa.nulls(n, pa.string()),
                "speaker": pa.nulls(n, pa.string()),
                "language": languages[rng.integers(0, len(languages), n)],
            }
        )
        pq.write_table(SEGMENTS.conform(seg), root / "segments" / f"part-{part:04d}.parquet")
    return {"segments": n_segments, "segment_hours": total_s / 3600, "recordings": n_rec}


PEAK_RSS = """
def peak_rss_mb():
    # VmHWM is this program's own peak: ru_maxrss would carry over the peak of the process
    # that forked it (Linux keeps it across exec), e.g. a whole pytest session's.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

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
