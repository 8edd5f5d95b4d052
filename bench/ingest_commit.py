"""Benchmark: the cost of committing one ingest unit, against the size of the build.

    .venv/bin/python bench/ingest_commit.py [--sizes 10000 100000 1000000] [--units 64]
        [--files-per-unit 256] [--baseline-reps 2] [--work /tmp/DIR] [--keep]

Per size, a synthetic build (bench/synthetic.py `recordings_table`, the one home for synthetic
tables) of N committed recordings: ingest's layout, `DIR/recordings/<unit>_0000.parquet` plus a
ledger marker per unit of `--files-per-unit` rows, every recording its own source key and
content; then `reindex` (the `minmo ingest --reindex` path: one scan) builds the commit index.
Building the tables and the reindex are timed apart and are not the figure.

The figure: committing `--units` new units of `--files-per-unit` files each, one after the
other, as the ingest driver does (pipelines/ingest/commit.py and commit_index.py): the
committed-source probe, the quarantine keys, the unit's counts, duplicate marking (a tenth of
each unit's contents repeat committed ones, so the probe finds hits), the index's pending
write, the ledger commit (moving the staged parts, the marker) and the fold every FOLD_UNITS
units (amortized: `--units` covers at least one fold). Staging a unit's files is not timed.
Printed: wall mean, median and p90 per unit, and the process's CPU time per unit (robust to
other load on a shared machine), each mean with its ratio to the smallest size's.

`--baseline-reps` also times the scan that the index replaced (every committed recordings part
read with an `isin` filter on the unit's URIs and hashes, as `committed_sources` and
`mark_duplicates` did before), so the two slopes can be compared on the same build.

Target (issue 15): per-unit commit cost at 1M committed rows <= 1.5x its cost at 10k.

Measured 2026-12-06 on the development VM (AMD EPYC, 2 vCPUs, shared with other engineers'
test runs: load average 25-45 during the run, so the wall columns are noisy and the CPU column
is the one to judge), Python 3.11.7, pyarrow 26.0.1, `bench/ingest_commit.py --units 128`:

    rows        build s  reindex s  buckets  wall mean ms  ratio  CPU ms/unit  ratio  old scan ms
    10,000      2.6      3.4        256      572.0         1.00   67.0         1.00   105.7
    100,000     7.8      4.8        256      271.4         0.47   56.9         0.85   713.7
    1,000,000   81.1     59.6       256      280.5         0.49   67.2         1.00   5,728.0

An earlier run of the same command (fold every 32 units, memory-mapped reads; load ~20):
wall 170.6 / 216.8 / 162.1 ms, CPU 90.4 / 94.9 / 105.1 ms (1.16x at 1M), old scan 145.5 /
1,775 / 8,728 ms. Target (1M <= 1.5x of 10k): MET on CPU time (1.00x) and on wall time; the
scan the index replaced grows 54x over the same range.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import cpu_model  # noqa: E402
from bench.synthetic import recordings_table, signal_measures  # noqa: E402
from pipelines.build import BuildDir, StepLedger  # noqa: E402
from pipelines.ingest import commit_index  # noqa: E402
from pipelines.ingest.commit import (  # noqa: E402
    committed_sources,
    fill_source_keys,
    mark_duplicates,
    unit_stats,
)
from pipelines.ingest.commit_index import CommitIndex, reindex  # noqa: E402
from schemas import RECORDINGS  # noqa: E402

STEP, TABLES = "ingest", ("recordings", "segments", "quarantine")
CORPUS = "bench"


def unit_table(start: int, n: int, rng: np.random.Generator, dup_of: int = 0) -> pa.Table:
    """`n` recordings numbered from `start`; the first `dup_of` of them repeat the contents of
    recordings 0.. (already committed), so duplicate marking has hits."""
    numbers = np.arange(start, start + n)
    ids = np.char.add("r", np.char.zfill(numbers.astype(str), 12))
    uris = np.char.add(np.char.add("/corpus/", np.char.zfill(numbers.astype(str), 12)), ".flac")
    table = recordings_table(
        ids,
        source_uri=uris,
        corpus=np.full(n, CORPUS),
        duration_s=rng.uniform(2, 15, n),
        file_bytes=rng.integers(10_000, 500_000, n),
        language=np.full(n, "en"),
        speaker=np.full(n, "s"),
        measures=signal_measures(rng, n),
    )
    if dup_of:
        sha = table.column("content_sha1").to_numpy(zero_copy_only=False).astype(object)
        sha[:dup_of] = [f"shar{i:012d}" for i in range(dup_of)]
        table = RECORDINGS.conform(
            table.set_column(
                table.schema.get_field_index("content_sha1"),
                "content_sha1",
                pa.array(sha, pa.string()),
            )
        )
    return table


def unit_name(i: int) -> str:
    return f"u{i:015d}"


def write_build(root: Path, n_rows: int, per_unit: int) -> None:
    rng = np.random.default_rng(0)
    (root / "recordings").mkdir(parents=True)
    done = root / "_state" / STEP / "done"
    done.mkdir(parents=True)
    for u, start in enumerate(range(0, n_rows, per_unit)):
        n = min(per_unit, n_rows - start)
        pq.write_table(
            unit_table(start, n, rng), root / "recordings" / f"{unit_name(u)}_0000.parquet"
        )
        (done / f"{unit_name(u)}.json").write_text(
            json.dumps({"unit": unit_name(u), "recordings": n})
        )


def commit_units(
    root: Path, n_rows: int, per_unit: int, units: int
) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (this process, all its threads) per unit for `units` new units
    committed after `n_rows` rows."""
    build = BuildDir(str(root))
    ledger = StepLedger(build, STEP, TABLES)
    index = CommitIndex.open(build, ledger)
    rng = np.random.default_rng(1)
    first = -(-n_rows // per_unit)
    times, cpu = [], []
    for k in range(units):
        unit = unit_name(first + k)
        table = unit_table(n_rows + k * per_unit, per_unit, rng, dup_of=per_unit // 10)
        staging = ledger.staging_dir(unit)
        build.fs.create_dir(f"{staging}/recordings", recursive=True)
        with build.fs.open_output_stream(f"{staging}/recordings/part.parquet") as out:
            pq.write_table(table, out)
        uris = table.column("source_uri").to_pylist()
        keys = table.column("source_key").to_pylist()
        order = {u: i for i, u in enumerate(uris)}
        started, cpu_started = time.perf_counter(), time.process_time()
        seen = committed_sources(index, keys)
        assert not seen, "new units hold new sources"
        fill_source_keys(build, f"{staging}/quarantine", dict(zip(uris, keys, strict=True)))
        stats = unit_stats(build, staging)
        stats["duplicates"], originals = mark_duplicates(
            build, index, f"{staging}/recordings", order
        )
        assert stats["duplicates"] == per_unit // 10, stats["duplicates"]
        index.add(unit, keys, originals)
        ledger.commit(unit, stats)
        index.maybe_fold()
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return times, cpu


def baseline_scan(root: Path, per_unit: int, reps: int) -> float:
    """Seconds per unit of the scan the index replaced (both filters, all committed parts)."""
    build = BuildDir(str(root))
    rng = np.random.default_rng(2)
    best = []
    for _ in range(reps):
        table = unit_table(10**11, per_unit, rng)
        started = time.perf_counter()
        files = build.files(build.table_dir("recordings"), ".parquet")
        dataset = pads.dataset(files, filesystem=build.fs, format="parquet")
        dataset.to_table(
            columns=["source_uri"], filter=pc.field("source_uri").isin(table.column("source_uri"))
        )
        dataset.to_table(
            columns=["content_sha1", "recording_id"],
            filter=pc.field("content_sha1").isin(table.column("content_sha1"))
            & pc.field("dup_of").is_null(),
        )
        best.append(time.perf_counter() - started)
    return statistics.median(best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--units", type=int, default=2 * commit_index.FOLD_UNITS)
    parser.add_argument("--files-per-unit", type=int, default=256)
    parser.add_argument("--baseline-reps", type=int, default=2)
    parser.add_argument("--work", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    print(
        f"# {cpu_model()}, {platform.python_version()}, pyarrow {pa.__version__}; "
        f"{args.units} units x {args.files_per_unit} files per size; fold every "
        f"{commit_index.FOLD_UNITS} units; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        f"{'rows':>10} {'build s':>8} {'reindex s':>9} {'buckets':>7} "
        f"{'mean ms':>8} {'median':>7} {'p90':>7} {'ratio':>6} {'cpu ms':>7} {'ratio':>6} "
        f"{'old scan ms':>11}"
    )
    work = Path(args.work or tempfile.mkdtemp(prefix="ingest_commit_"))
    first: tuple[float, float] | None = None
    try:
        for size in args.sizes:
            root = work / f"build_{size}"
            if root.exists():
                shutil.rmtree(root)
            t0 = time.perf_counter()
            write_build(root, size, args.files_per_unit)
            built = time.perf_counter() - t0
            t0 = time.perf_counter()
            build = BuildDir(str(root))
            counts = reindex(build, StepLedger(build, STEP, TABLES))
            reindexed = time.perf_counter() - t0
            old = (
                baseline_scan(root, args.files_per_unit, args.baseline_reps) * 1e3
                if args.baseline_reps
                else float("nan")
            )
            times, cpu = commit_units(root, size, args.files_per_unit, args.units)
            mean, cpu_mean = statistics.mean(times) * 1e3, statistics.mean(cpu) * 1e3
            first = first or (mean, cpu_mean)
            p90 = float(np.percentile(times, 90)) * 1e3
            print(
                f"{size:>10,} {built:>8.1f} {reindexed:>9.1f} {counts['buckets']:>7} "
                f"{mean:>8.1f} {statistics.median(times) * 1e3:>7.1f} {p90:>7.1f} "
                f"{mean / first[0]:>6.2f} {cpu_mean:>7.1f} {cpu_mean / first[1]:>6.2f} "
                f"{old:>11.1f}",
                flush=True,
            )
            if not args.keep:
                shutil.rmtree(root)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
