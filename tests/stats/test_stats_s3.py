"""`minmo stats` on a build in an object store (moto's S3 server, in-process): the same figures
as on local disk, the report written back to the bucket."""

from __future__ import annotations

import json
import uuid

import pytest

from pipelines.stats.compute import StatsConfig, compute_stats
from pipelines.stats.run import run_stats
from tests.stats.tables import write_build
from tests.stats.test_stats_shards import write_stage


@pytest.mark.slow
def test_stats_of_an_s3_build_match_the_local_ones(tmp_path, moto_s3_options):
    import pyarrow.fs as pafs

    local = write_stage(write_build(tmp_path / "build"))
    expected = compute_stats(str(local), StatsConfig(out=str(tmp_path / "out")), progress=False)
    options = moto_s3_options
    s3 = pafs.S3FileSystem(**options, allow_bucket_creation=True)
    bucket = f"stats-{uuid.uuid4().hex[:8]}"  # moto's servers share one in-process store
    s3.create_dir(bucket)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        with s3.open_output_stream(f"{bucket}/build/{path.relative_to(local)}") as out:
            out.write(path.read_bytes())
    summary = run_stats(
        [f"s3://{bucket}/build"], StatsConfig(storage_options=options), progress=False
    )
    got = summary.stats[0]
    for section in ("recordings", "segments", "quarantine", "conversations", "samples"):
        assert _rounded(got[section]) == _rounded(expected[section]), section
    assert got["shards"] == expected["shards"]
    assert summary.report_html == f"s3://{bucket}/build/stats/report.html"
    with s3.open_input_stream(f"{bucket}/build/stats/stats.json") as f:
        assert json.loads(f.read())["recordings"]["count"] == 4
    with s3.open_input_stream(f"{bucket}/build/stats/report.html") as f:
        assert f.read().count(b'<figure class="plot"') == summary.figures


def _rounded(obj):
    """Sums in another order differ in the last digits; compare to 4 decimals."""
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj
