"""What the report shows, section by section, for one build or two (see report.py).

Owns: the choice and order of tables and plots and their captions' wording.
Must not: compute statistics beyond picking values out of stats.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipelines.stats import plots
from pipelines.stats.evals import LOWER_IS_BETTER, shards_key
from pipelines.stats.report import Build, Report, fmt_delta, fmt_number, value_at
from schemas import FrameLabel

STAGES = ("stage1", "stage2", "stage3", "stage4")
MAX_SHARD_BARS = 120  # above this many shards a stage's balance is drawn as a histogram


def render_report(builds: Sequence[Build], title: str) -> str:
    """The whole HTML page for `builds` ([(label, stats)], one or two)."""
    r = Report(builds, title)
    _errors(r)
    _overview(r)
    _hours(r)
    _durations(r)
    _quality(r)
    _speakers_and_duplicates(r)
    _quarantine(r)
    _conversations(r)
    _shards(r)
    _eval(r)
    return r.html()


def _has(r: Report, path: str) -> bool:
    return any(value_at(s, path) is not None for _, s in r.builds)


def _errors(r: Report) -> None:
    rows = [
        [*([label] if r.compare else []), e["section"], e.get("source", ""), e["error"]]
        for label, s in r.builds
        for e in s.get("errors") or []
    ]
    if rows:
        r.section("errors", "Inputs that could not be read")
        r.warn(
            f"{len(rows)} input(s) could not be read; the figures below leave them out. "
            "Fix or remove them and rerun."
        )
        r.table([*(["build"] if r.compare else []), "section", "input", "error"], rows)


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else round(value * factor, 6)


def _overview(r: Report) -> None:
    r.section(
        "overview", "Overview", "Headline figures of the build" + ("s." if r.compare else ".")
    )
    metrics = [
        ("recordings", "recordings.count"),
        ("recording hours", "recordings.hours"),
        ("recording GB (source bytes)", lambda s: _scaled(value_at(s, "recordings.bytes"), 1e-9)),
        ("segments", "segments.count"),
        ("segment hours", "segments.hours"),
        ("exact duplicate recordings", "recordings.duplicates.count"),
        ("exact duplicate hours", "recordings.duplicates.hours"),
        ("quarantined inputs", "quarantine.count"),
        ("conversations", "conversations.recordings"),
        ("conversation hours", "conversations.hours"),
        ("speaker turns", "conversations.turns"),
        ("shard samples", "samples.count"),
        ("shard sample hours", "samples.hours"),
    ]
    for stage in STAGES:
        metrics.append((f"{stage} samples", f"shards.{stage}.samples"))
        metrics.append((f"{stage} hours", f"shards.{stage}.hours"))
    r.compare_rows(metrics)


def _hours(r: Report) -> None:
    r.section("hours", "Where the hours come from")
    if not _has(r, "recordings") and not _has(r, "samples"):
        r.note("No recordings table and no shards in this input.")
        return
    for dim in ("corpus", "language", "task"):
        r.breakdown_plot(f"rec-{dim}", f"recordings.by.{dim}", f"Recorded audio hours by {dim}")
    r.breakdown_plot("seg-language", "segments.by.language", "Segment hours by language")
    r.breakdown_plot("smp-stage", "samples.by.stage", "Shard sample hours by training stage")
    r.breakdown_plot("smp-task", "samples.by.task", "Shard sample hours by task")
    r.breakdown_plot("smp-count-task", "samples.by.task", "Shard samples by task", unit_of="count")
    rows = value_at(r.builds[-1][1], "samples.by_stage_task") or []  # the (last) build's
    if rows:
        r.table(
            ["stage", "task", "samples", "hours"],
            [[x["stage"], x["task"], x["count"], x["hours"]] for x in rows],
        )


def _durations(r: Report) -> None:
    r.section(
        "durations",
        "Durations",
        "Fixed bins (0.5 s to 2 h), drawn at equal widths; counts per bin.",
    )
    r.dist_plot("dur-rec", "recordings.duration_s", "Recording durations", "duration")
    r.dist_plot(
        "dur-rec-h",
        "recordings.duration_s",
        "Audio hours per recording-duration bin",
        "duration",
        ylabel="audio hours (h)",
        weight="hours",
    )
    r.dist_plot("dur-seg", "segments.duration_s", "Segment durations", "duration")
    for stage in STAGES:
        r.dist_plot(
            f"dur-{stage}",
            "samples.duration_s",
            f"{stage} sample durations (input audio; target speech for TTS)",
            "duration",
            group=("stage", stage),
        )


def _quality(r: Report) -> None:
    r.section(
        "quality",
        "Level, clipping, SNR and speech ratio",
        "Per recording, as ingest measured them on the 16 kHz mono mix.",
    )
    if not _has(r, "recordings"):
        r.note("No recordings table in this input.")
        return
    r.dist_plot("q-rms", "recordings.rms_dbfs", "RMS level per recording", "RMS level")
    r.dist_plot("q-peak", "recordings.peak_dbfs", "Peak level per recording", "peak level")
    r.dist_plot(
        "q-clip",
        "recordings.clipping_ratio",
        "Clipped-sample ratio per recording (bins by decade)",
        "clipped samples",
    )
    r.dist_plot("q-snr", "recordings.snr_db", "Estimated SNR per recording", "SNR")
    r.dist_plot(
        "q-speech", "recordings.speech_ratio", "Speech ratio (VAD) per recording", "speech ratio"
    )
    if _has(r, "segments"):
        r.dist_plot(
            "q-speech-prob",
            "segments.speech_prob",
            "Mean VAD speech probability per segment",
            "speech probability",
        )
    rows = []
    for label, s in r.builds:
        for corpus, g in sorted((value_at(s, "recordings.rms_dbfs.by.corpus") or {}).items()):
            snr = (value_at(s, "recordings.snr_db.by.corpus") or {}).get(corpus, {})
            clip = (value_at(s, "recordings.clipping_ratio.by.corpus") or {}).get(corpus, {})
            rows.append(
                [
                    *([label] if r.compare else []),
                    corpus,
                    g["n"],
                    g["quantiles"]["p50"],
                    (snr.get("quantiles") or {}).get("p50"),
                    clip.get("max"),
                ]
            )
    if rows:
        r.table(
            [
                *(["build"] if r.compare else []),
                "corpus",
                "recordings",
                "median RMS dBFS",
                "median SNR dB",
                "max clipped ratio",
            ],
            rows,
        )


def _speakers_and_duplicates(r: Report) -> None:
    r.section("speakers", "Speakers and exact duplicates")
    if not _has(r, "recordings"):
        r.note("No recordings table in this input.")
        return
    corpora, series = r.keyed_series(
        lambda s: {x["corpus"]: x["speakers"] for x in value_at(s, "recordings.speakers") or []}
    )
    if corpora:
        r.figure(
            "speakers",
            plots.bars("speakers", corpora, series, "distinct speakers", "corpus"),
            "Distinct labelled speakers per corpus ("
            + r.per_build(
                lambda s: ", ".join(
                    f"{x['corpus']} {x['speakers']} (+{x['diarized_speakers']} diarized voices)"
                    for x in value_at(s, "recordings.speakers") or []
                )
            )
            + ").",
        )
    if any((value_at(s, "recordings.duplicates.count") or 0) for _, s in r.builds):
        r.breakdown_plot(
            "dups", "recordings.duplicates.by_corpus", "Exact-duplicate audio hours by corpus"
        )
    else:
        r.note("No exact duplicates: every recording's decoded audio hash is unique.")


def _quarantine(r: Report) -> None:
    r.section("quarantine", "Quarantine", "Inputs the steps refused, with the reason code.")
    reasons, series = r.keyed_series(
        lambda s: {
            f"{x['step']}: {x['reason_code']}": x["count"]
            for x in value_at(s, "quarantine.by_reason") or []
        }
    )
    if not reasons:
        r.note("Nothing was quarantined.")
        return
    r.figure(
        "quarantine",
        plots.bars(
            "quarantine", reasons, series, "inputs refused", "step: reason", horizontal=True
        ),
        "Quarantined inputs by step and reason ("
        + r.per_build(lambda s: f"{s['quarantine']['count']:,} in all")
        + ").",
    )
    for label, s in r.builds:
        r.table(
            [
                *(["build"] if r.compare else []),
                "step",
                "reason",
                "count",
                "example URIs",
                "example detail",
            ],
            [
                [
                    *([label] if r.compare else []),
                    x["step"],
                    x["reason_code"],
                    x["count"],
                    "\n".join(x["examples"]),
                    x.get("example_detail"),
                ]
                for x in value_at(s, "quarantine.by_reason") or []
            ],
        )


def _conversations(r: Report) -> None:
    r.section(
        "conversations",
        "Conversations and turn-taking",
        "From the diarized turns: floor-transfer offset (FTO) is the next speaker's start minus "
        "the previous turn's end, positive for a gap, negative for an overlap.",
    )
    if not _has(r, "conversations"):
        r.note("No turns table in this input.")
        return
    r.compare_rows(
        [
            ("conversations", "conversations.recordings"),
            ("hours", "conversations.hours"),
            ("turns", "conversations.turns"),
            ("speaker changes", "conversations.speaker_changes"),
            ("turns per minute (mean)", "conversations.turns_per_minute.mean"),
            ("median gap (s)", "conversations.gap_s.quantiles.p50"),
            ("median overlap (s)", "conversations.overlap_s.quantiles.p50"),
            ("back-channels per minute", "conversations.events.backchannel_per_minute"),
            ("back-channel share of user events", "conversations.events.backchannel_share"),
            ("barge-in share of user turn-takings", "conversations.events.barge_in_share"),
        ]
    )
    r.dist_plot(
        "c-tpm", "conversations.turns_per_minute", "Turns per minute per conversation", "turn rate"
    )
    r.dist_plot(
        "c-fto",
        "conversations.floor_transfer_s",
        "Floor-transfer offsets at speaker changes",
        "offset",
    )
    r.dist_plot("c-gap", "conversations.gap_s", "Gaps between speakers", "gap")
    r.dist_plot("c-overlap", "conversations.overlap_s", "Overlaps between speakers", "overlap")
    if _has(r, "conversations.events"):
        types, series = r.keyed_series(lambda s: value_at(s, "conversations.events.per_hour") or {})
        r.figure(
            "c-events",
            plots.bars("c-events", types, series, "events per hour", "duplex event type"),
            "Duplex events per hour of labelled conversation (both role choices) ("
            + r.per_build(
                lambda s: ", ".join(
                    f"{k} {v:,}"
                    for k, v in (value_at(s, "conversations.events.counts") or {}).items()
                )
            )
            + ").",
        )
        r.dist_plot(
            "c-user-gap",
            "conversations.events.user_gap_s",
            "Drawn user turn-taking gaps T (the N(0.6, 0.4^2) s heuristic)",
            "gap T",
        )
    if _has(r, "conversations.frame_labels"):
        classes, series = r.keyed_series(
            lambda s: value_at(s, "conversations.frame_labels.share") or {},
            keys=[label.name.lower() for label in FrameLabel],
        )
        r.figure(
            "c-frames",
            plots.bars("c-frames", classes, series, "share of frames", "frame label"),
            "Duplex frame-label balance ("
            + r.per_build(
                lambda s: f"{(value_at(s, 'conversations.frame_labels.frames') or 0):,} frames"
            )
            + ").",
        )


def _shards(r: Report) -> None:
    r.section(
        "shards",
        "Shards: balance and mixture",
        "Per stage, from index.json: samples per shard, each task's share of the samples "
        "against the share the job's mixture weights ask for (weight x samples built), what "
        "each quality filter left out, and the held-out splits.",
    )
    stages = [st for st in STAGES if _has(r, f"shards.{st}")]
    if not stages:
        r.note("No shard directories in this input.")
        return
    rows = []
    for stage in stages:
        for label, s in r.builds:
            x = value_at(s, f"shards.{stage}")
            if not x:
                continue
            rows.append(
                [
                    stage,
                    *([label] if r.compare else []),
                    x["shards"],
                    x["samples"],
                    x["hours"],
                    round(x["bytes"] / 1e6, 3),
                    x["spread"]["samples"]["cv"],
                    x["spread"]["bytes"]["min"],
                    x["spread"]["bytes"]["max"],
                    x["speech_tokens_per_s"],
                ]
            )
    r.table(
        [
            "stage",
            *(["build"] if r.compare else []),
            "shards",
            "samples",
            "hours",
            "MB",
            "samples CV",
            "min bytes",
            "max bytes",
            "speech tokens/s",
        ],
        rows,
    )
    for stage in stages:
        _splits(r, stage)
        _filtered(r, stage)
        if not _listed(r, stage):  # a build past max_shard_rows: its distributions and worst
            _shard_distributions(r, stage)
            _mixture(r, stage)
            continue
        names, _ = r.keyed_series(lambda s, st=stage: _per_shard(s, st, "samples"))
        for metric, unit in (("samples", "samples"), ("hours", "audio hours (h)")):
            caption = r.per_build(lambda s, st=stage, m=metric: _spread_text(s, st, m))
            anchor = f"sh-{stage}-{metric}"
            if len(names) > MAX_SHARD_BARS:  # one bar per shard is unreadable: their spread
                r.figure(
                    anchor,
                    _shard_histogram(r, stage, metric, unit, anchor),
                    f"{stage}: shards by {metric} per shard ({caption}).",
                )
                continue
            _, series = r.keyed_series(
                lambda s, st=stage, m=metric: _per_shard(s, st, m), keys=names
            )
            r.figure(
                anchor,
                plots.bars(anchor, [n.rsplit(".", 1)[0] for n in names], series, unit, "shard"),
                f"{stage}: {metric} per shard ({caption}).",
            )
        _mixture(r, stage)


def _splits(r: Report, stage: str) -> None:
    """A split stage's train / valid / test sizes, per build (nothing for an unsplit stage)."""
    rows = [
        [*([label] if r.compare else []), split, v["shards"], v["samples"], v["hours"]]
        for label, s in r.builds
        for split, v in (value_at(s, f"shards.{stage}.splits") or {}).items()
    ]
    if rows:
        r.note(f"{stage}: held-out splits (no speaker or recording is in two of them).")
        r.table([*(["build"] if r.compare else []), "split", "shards", "samples", "hours"], rows)


def _filtered(r: Report, stage: str) -> None:
    """What each quality filter removed from a stage, per task: hours as bars, and a table."""
    per_build = [(label, value_at(s, f"shards.{stage}.filtered") or []) for label, s in r.builds]
    if not any(rows for _, rows in per_build):
        return
    keys = sorted({f"{x['task']}: {x['reason']}" for _, rows in per_build for x in rows})
    series = [
        (
            label,
            [
                next((x["hours"] for x in rows if f"{x['task']}: {x['reason']}" == k), 0.0)
                for k in keys
            ],
        )
        for label, rows in per_build
    ]
    anchor = f"filtered-{stage}"
    total = r.per_build(lambda s, st=stage: _filtered_total(s, st))
    r.figure(
        anchor,
        plots.bars(anchor, keys, series, "removed audio (h)", "task: filter"),
        f"{stage}: audio hours each quality filter removed, per task ({total}). A filtered "
        "sample's input is fine: it is counted here, not quarantined.",
    )
    r.table(
        [*(["build"] if r.compare else []), "task", "filter", "samples", "hours"],
        [
            [*([label] if r.compare else []), x["task"], x["reason"], x["samples"], x["hours"]]
            for label, rows in per_build
            for x in rows
        ],
    )


def _filtered_total(s: dict[str, Any], stage: str) -> str:
    rows = value_at(s, f"shards.{stage}.filtered") or []
    return f"{sum(x['samples'] for x in rows):,} samples, {sum(x['hours'] for x in rows):.4f} h"


def _listed(r: Report, stage: str) -> bool:
    """Whether every build that has `stage` lists its shards one by one (`per_shard`)."""
    return all(
        value_at(s, f"shards.{stage}.per_shard") is not None
        for _, s in r.builds
        if value_at(s, f"shards.{stage}")
    )


def _shard_distributions(r: Report, stage: str) -> None:
    """A stage stats.json keeps no row per shard for: histograms of the per-shard figures on
    their fixed bins (trimmed to the bins in use), and the worst shards per criterion."""
    for metric, what in (("samples", "samples"), ("hours", "audio hours"), ("bytes", "bytes")):
        caption = r.per_build(lambda s, st=stage, m=metric: _spread_text(s, st, m))
        r.dist_plot(
            f"sh-{stage}-{metric}",
            f"shards.{stage}.per_shard_dist.{metric}",
            f"{stage}: shards by {what} per shard ({caption})",
            f"{what} per shard",
            ylabel="shards",
            trim=True,
        )
    rows = [
        [
            *([label] if r.compare else []),
            why.replace("_", " "),
            x["name"],
            x["samples"],
            x["hours"],
            round(x["bytes"] / 1e6, 3),
        ]
        for label, s in r.builds
        for why, worst in (value_at(s, f"shards.{stage}.worst") or {}).items()
        for x in worst
    ]
    if rows:
        r.note(
            f"{stage}: too many shards to list one by one; the worst shards per criterion "
            "(the least filled ones are leftovers and appends, the most filled the readers' "
            "stragglers):"
        )
        r.table(
            [*(["build"] if r.compare else []), "worst by", "shard", "samples", "hours", "MB"],
            rows,
        )


def _mixture(r: Report, stage: str) -> None:
    """A stage's task mixture, target share against achieved share, per build."""
    mixes = [(label, value_at(s, f"shards.{stage}.mixture") or []) for label, s in r.builds]
    tasks = sorted({m["task"] for _, mix in mixes for m in mix})
    if len(tasks) > 1:
        target = {m["task"]: m["target_share"] or 0 for m in mixes[-1][1]}
        series = [("target (weights)", [target.get(t, 0) for t in tasks])]
        for label, mix in mixes:
            got = {m["task"]: m["share"] or 0 for m in mix}
            series.append(
                (
                    f"achieved ({label})" if r.compare else "achieved",
                    [got.get(t, 0) for t in tasks],
                )
            )
        worst = r.per_build(lambda s, st=stage: _worst_mix(s, st))
        r.figure(
            f"mix-{stage}",
            plots.bars(f"mix-{stage}", tasks, series, "share of the stage's samples", "task"),
            f"{stage}: task mixture, target share against achieved share ({worst}).",
        )
        for label, mix in mixes:
            r.table(
                [
                    *(["build"] if r.compare else []),
                    "task",
                    "weight",
                    "built",
                    "kept",
                    "samples",
                    "target share",
                    "share",
                    "delta",
                ],
                [
                    [
                        *([label] if r.compare else []),
                        m["task"],
                        m["weight"],
                        m["built"],
                        m["kept"],
                        m["samples"],
                        m["target_share"],
                        m["share"],
                        m["share_delta"],
                    ]
                    for m in mix
                ],
            )


def _per_shard(s: dict[str, Any], stage: str, metric: str) -> dict[str, Any]:
    return {x["name"]: x[metric] for x in value_at(s, f"shards.{stage}.per_shard") or []}


def _spread_text(s: dict, stage: str, metric: str) -> str:
    spread = value_at(s, f"shards.{stage}.spread.{metric}") or {}
    return (
        f"{value_at(s, f'shards.{stage}.shards') or 0} shards, min {fmt_number(spread.get('min'))} / "
        f"max {fmt_number(spread.get('max'))} / CV {fmt_number(spread.get('cv'))}"
    )


def _worst_mix(s: dict, stage: str) -> str:
    rows = [m for m in value_at(s, f"shards.{stage}.mixture") or [] if m["share_delta"] is not None]
    if not rows:
        return "no mixture"
    m = max(rows, key=lambda m: abs(m["share_delta"]))
    return f"largest gap {m['share_delta']:+.1%} for {m['task']}"


def _shard_histogram(r: Report, stage: str, metric: str, unit: str, anchor: str) -> str:
    """Per-shard values of every build binned on shared edges (30 bins over their range)."""
    values = [list(_per_shard(s, stage, metric).values()) for _, s in r.builds]
    flat = [v for vs in values for v in vs]
    lo, hi = min(flat), max(flat)
    width = (hi - lo) / 30 or 1.0
    edges = [lo + i * width for i in range(31)]
    series = []
    for (label, _), vs in zip(r.builds, values, strict=True):
        counts = [0] * 30
        for v in vs:
            counts[min(29, int((v - lo) / width))] += 1
        series.append((label, counts))
    return plots.histogram(anchor, edges, series, f"{metric} per shard ({unit})", "shards")


def _better(metric: str) -> str:
    return "lower is better" if metric.startswith(LOWER_IS_BETTER) else "higher is better"


def _eval(r: Report) -> None:
    """Per shard directory and task: a table of each evaluated checkpoint's figures (with the
    delta when there are two), and each figure against the training step when the checkpoints
    have several steps."""
    r.section(
        "eval",
        "Evaluation",
        "What `minmo eval` measured on held-out shards, per checkpoint (the eval.json files "
        "under DIR/eval/ or given with --eval). Rates and F1 are pooled over the samples.",
    )
    columns: list[tuple[str, str, dict[str, Any]]] = []  # (column label, build label, entry)
    for label, s in r.builds:
        for entry in s.get("eval") or []:
            name = f"{entry['stage']} @ step {fmt_number(entry['step'])}"
            name = f"{label}: {name}" if r.compare else name
            taken = {c for c, _, _ in columns}
            unique, n = name, 2
            while unique in taken:  # the same stage and step evaluated twice
                unique, n = f"{name} ({n})", n + 1
            columns.append((unique, label, {**entry, "_root": s["inputs"]["root"]}))
    if not columns:
        r.note(
            "No eval.json in this input: a job's `eval` step writes DIR/eval/<stage>/eval.json; "
            "`minmo stats DIR --eval FILE` shows others."
        )
        return
    r.table(
        ["checkpoint", "stage", "step", "export", "shards", "samples"],
        [
            [c, e["stage"], e["step"], e["checkpoint"], e["shards"], e["samples"]]
            for c, _, e in columns
        ],
    )
    groups: dict[tuple[str, str], list[tuple[str, str, dict[str, Any]]]] = {}
    for column, label, entry in columns:
        for task in entry["tasks"]:
            key = (shards_key(entry, entry["_root"]), task)
            groups.setdefault(key, []).append((column, label, entry))
    for (shards, task), members in sorted(groups.items()):
        _eval_group(r, shards, task, members)


def _eval_group(
    r: Report, shards: str, task: str, members: list[tuple[str, str, dict[str, Any]]]
) -> None:
    figures = [e["tasks"][task] for _, _, e in members]
    metrics = list(dict.fromkeys(m for f in figures for m in f["metrics"]))
    two = len(members) == 2
    r.note(
        f"{task} on {shards}"
        + (": the delta is the second checkpoint's minus the first's." if two else ".")
    )
    rows: list[list[Any]] = [["samples", *(f["samples"] for f in figures)]]
    if two:
        rows[0].append(fmt_delta(figures[0]["samples"], figures[1]["samples"]))
    for metric in metrics:
        values = [f["metrics"].get(metric) for f in figures]
        row = [f"{metric} ({_better(metric)})", *values]
        rows.append([*row, fmt_delta(values[0], values[1])] if two else row)
    headers = ["metric", *(c for c, _, _ in members)]
    r.table([*headers, "delta"] if two else headers, rows)
    stepped = [(label, e) for _, label, e in members if e["step"] is not None]
    if len({e["step"] for _, e in stepped}) < 2:
        return
    anchor = f"eval-{shards}-{task}".replace("/", "-")
    for metric in metrics:
        series = []
        for label in dict.fromkeys(label for label, _ in stepped):
            points = sorted(
                (e["step"], e["tasks"][task]["metrics"][metric])
                for lab, e in stepped
                if lab == label and metric in e["tasks"][task]["metrics"]
            )
            if points:
                series.append((label, [x for x, _ in points], [y for _, y in points]))
        shown = "; ".join(
            f"{label}: " * r.compare
            + ", ".join(f"step {x}: {fmt_number(y)}" for x, y in zip(xs, ys, strict=True))
            for label, xs, ys in series
        )
        r.figure(
            f"{anchor}-{metric}",
            plots.lines(f"{anchor}-{metric}", series, "training step (steps)", metric),
            f"{task} on {shards}: {metric} against the training step ({_better(metric)}; {shown}).",
        )
