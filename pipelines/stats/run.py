"""`minmo stats`: one build -> DIR/stats/{stats.json, report.html}; two -> a comparison.

An input may also be a stats.json written earlier (keep the old one, rebuild, compare). Files
are written atomically; rerunning recomputes the aggregates (seconds) and rereads only shards
whose samples it has not extracted before.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any

from pipelines.build import BuildDir
from pipelines.stats.compare import compare_stats
from pipelines.stats.compute import StatsConfig, compute_stats
from pipelines.stats.sections import render_report
from schemas.stats import validate_stats


@dataclass
class StatsSummary:
    out: str
    stats_json: str
    report_html: str
    compare_json: str | None
    figures: int
    seconds: float
    stats: list[dict[str, Any]]

    def render(self) -> str:
        lines = ["stats:"]
        for s in self.stats:
            rec = s.get("recordings") or {}
            smp = s.get("samples") or {}
            lines.append(
                f"  {s['inputs']['root']}: {len(s['inputs']['tables'])} tables, "
                f"{len(s['shards'])} shard stages; {rec.get('count', 0):,} recordings "
                f"({rec.get('hours', 0):.3f} h), {smp.get('count', 0):,} shard samples, "
                f"{s['quarantine']['count']:,} quarantined"
            )
            for e in s.get("errors") or []:
                lines.append(f"  NOT READ ({e['section']}): {e.get('source', '')} {e['error']}")
        lines.append(f"  {self.figures} figures in {self.seconds:.1f} s")
        lines.append(f"  stats:  {self.stats_json}")
        if self.compare_json:
            lines.append(f"  deltas: {self.compare_json}")
        lines.append(f"  report: {self.report_html}")
        return "\n".join(lines)


def _load_or_compute(uri: str, config: StatsConfig, progress: bool) -> dict[str, Any]:
    if uri.endswith(".json"):
        build = BuildDir(uri.rsplit("/", 1)[0] or ".", **config.storage_options)
        return validate_stats(build.read_json(uri))
    return compute_stats(uri, config, progress=progress)


def run_stats(
    inputs: list[str], config: StatsConfig | None = None, progress: bool = True
) -> StatsSummary:
    """Summarise one input, or compare two (A then B). See the module docstring."""
    if len(inputs) not in (1, 2):
        raise ValueError(f"stats: give one input, or two to compare (got {len(inputs)})")
    config = config or StatsConfig()
    started = time.perf_counter()
    if len(inputs) == 1:
        out_uri = config.out or f"{inputs[0].rstrip('/')}/stats"
        stats = [_load_or_compute(inputs[0], replace(config, out=out_uri), progress)]
        builds = [(_label(inputs[0]), stats[0])]
        title = config.title or f"minmo stats: {inputs[0]}"
    else:
        a, b = inputs
        out_uri = (config.out or f"{b.rstrip('/')}/stats/compare").rstrip("/")
        stats = [
            _load_or_compute(a, replace(config, out=f"{out_uri}/a"), progress),
            _load_or_compute(b, replace(config, out=f"{out_uri}/b"), progress),
        ]
        builds = [("A", stats[0]), ("B", stats[1])]
        title = config.title or f"minmo stats: {a} (A) against {b} (B)"
    out = BuildDir(
        out_uri, **config.storage_options
    )  # only now: a missing input must not leave a folder behind

    def write(name: str, data: bytes) -> str:
        """Write DIR/name atomically; return it as a URI like the input's (s3://... stays)."""
        out.write_bytes_atomic(out.path(*name.split("/")), data)
        return f"{out_uri.rstrip('/')}/{name}"

    compare_path = None
    if len(stats) == 1:
        stats_path = write("stats.json", _dump(stats[0]))
    else:
        write("a/stats.json", _dump(stats[0]))
        stats_path = write("b/stats.json", _dump(stats[1]))
        compare_path = write("compare.json", _dump(compare_stats(stats[0], stats[1])))
    page = render_report(builds, title)
    report_path = write("report.html", page.encode("utf-8"))
    return StatsSummary(
        out=out_uri,
        stats_json=stats_path,
        report_html=report_path,
        compare_json=compare_path,
        figures=page.count('<figure class="plot"'),
        seconds=time.perf_counter() - started,
        stats=stats,
    )


def _label(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1] or uri


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
