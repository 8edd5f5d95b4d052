"""Statistics of the Parquet tables: recordings, segments, quarantine, and the conversation tables
(turns, events, frame_labels). Every figure is one DuckDB aggregation over the registered views.

Owns: the queries and the shape of their sections in stats.json (see schemas/stats.py).
Must not: read rows into Python beyond aggregate results, or know about shards.
"""

from __future__ import annotations

from typing import Any

import duckdb

from pipelines.stats import dist as d
from schemas import FrameLabel

HOURS = "duration_s / 3600.0"
EXAMPLES = 3  # example source URIs kept per quarantine reason


def breakdown(
    con: duckdb.DuckDBPyConnection, relation: str, key: str, hours: str = HOURS
) -> list[dict[str, Any]]:
    """[{key, count, hours}] per value of `key`, most hours first, ties by key (nulls as
    "unknown")."""
    total = d.exact_sum(hours)
    rows = con.execute(
        f"SELECT coalesce(CAST({key} AS VARCHAR), 'unknown') AS k, count(*), {total} "
        # Ranked by the rounded hours it reports, ties by key (the module docstring of dist.py).
        f"FROM {relation} GROUP BY k ORDER BY round({total}, 6) DESC NULLS LAST, k"
    ).fetchall()
    return [{"key": k, "count": int(n), "hours": round(float(h or 0.0), 6)} for k, n, h in rows]


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    return con.execute(sql).fetchone() or ()


def recordings(con: duckdb.DuckDBPyConnection, has: set[str]) -> dict[str, Any]:
    n, hours, size = _one(con, f"SELECT count(*), {d.exact_sum(HOURS)}, sum(bytes) FROM recordings")
    groups = ("corpus", "language", "task")
    measured = {
        "rms_dbfs": ("rms_dbfs", d.DBFS),
        "peak_dbfs": ("peak_dbfs", d.DBFS),
        "clipping_ratio": ("clipping_ratio", d.CLIPPING_RATIO),
        "snr_db": ("snr_db", d.SNR_DB),
        "speech_ratio": ("speech_ratio", d.RATIO),
    }
    return {
        "count": int(n),
        "hours": round(float(hours or 0.0), 6),
        "bytes": int(size or 0),
        "by": {g: breakdown(con, "recordings", g) for g in (*groups, "container")},
        "duration_s": d.distribution(
            con, "recordings", "duration_s", d.DURATION_S, weight=HOURS, group_by=groups
        ),
        **{
            name: d.distribution(con, "recordings", col, bins, group_by=("corpus",))
            for name, (col, bins) in measured.items()
        },
        "speakers": speakers(con, has),
        "duplicates": duplicates(con),
    }


def duplicates(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Exact duplicates: recordings whose decoded PCM hash (content_sha1) an earlier row already
    has. The row ingest marked `dup_of` counts as the copy; otherwise the later id does."""
    copies = """
        (SELECT * FROM (
            SELECT corpus, duration_s, row_number() OVER (
                PARTITION BY content_sha1 ORDER BY (dup_of IS NOT NULL), recording_id) AS nth
            FROM recordings) WHERE nth > 1) AS copies
    """
    by_corpus = breakdown(con, copies, "corpus")
    return {
        "count": sum(r["count"] for r in by_corpus),
        "hours": round(sum(r["hours"] for r in by_corpus), 6),
        "by_corpus": by_corpus,
    }


def speakers(con: duckdb.DuckDBPyConnection, has: set[str]) -> list[dict[str, Any]]:
    """Per corpus: distinct labelled speakers (recordings/segments `speaker`) and distinct voices
    diarization found (recording-local, so counted per recording)."""
    labelled = ["SELECT corpus, speaker FROM recordings WHERE speaker IS NOT NULL"]
    _recording_corpus(con)
    if "segments" in has:
        labelled.append(
            "SELECT r.corpus, s.speaker FROM segments s JOIN rec_corpus r USING (recording_id) "
            "WHERE s.speaker IS NOT NULL"
        )
    rows = {
        k: {"corpus": k, "speakers": int(n), "diarized_speakers": 0}
        for k, n in con.execute(
            f"SELECT corpus, count(DISTINCT speaker) FROM ({' UNION ALL '.join(labelled)}) "
            "GROUP BY corpus"
        ).fetchall()
    }
    if "turns" in has:
        for k, n in con.execute(
            "SELECT r.corpus, count(DISTINCT (t.recording_id, t.speaker)) FROM turns t "
            "JOIN rec_corpus r USING (recording_id) GROUP BY r.corpus"
        ).fetchall():
            rows.setdefault(k, {"corpus": k, "speakers": 0, "diarized_speakers": 0})
            rows[k]["diarized_speakers"] = int(n)
    return sorted(rows.values(), key=lambda r: (-r["speakers"], r["corpus"]))


def _recording_corpus(con: duckdb.DuckDBPyConnection) -> None:
    """recording_id -> corpus as a DuckDB temp table: joins then build their hash table on this
    (small, with known cardinality) side, not on the streamed segments or turns, and DuckDB
    spills it to disk beyond the memory limit."""
    con.execute(
        "CREATE TEMP TABLE IF NOT EXISTS rec_corpus AS "
        "SELECT recording_id, any_value(corpus) AS corpus, max(duration_s) AS duration_s "
        "FROM recordings GROUP BY recording_id"
    )


def segments(con: duckdb.DuckDBPyConnection, has: set[str]) -> dict[str, Any]:
    columns = "s.duration_s, s.language, s.origin, s.speech_prob, s.speaker"
    if "recordings" in has:
        _recording_corpus(con)
        source = (
            f"SELECT {columns}, r.corpus FROM segments s "
            "LEFT JOIN rec_corpus r USING (recording_id)"
        )
    else:
        source = f"SELECT {columns}, NULL AS corpus FROM segments s"
    con.execute(f"CREATE OR REPLACE TEMP VIEW segments_c AS {source}")
    n, hours = _one(con, f"SELECT count(*), {d.exact_sum(HOURS)} FROM segments_c")
    groups = ("corpus", "language", "origin")
    return {
        "count": int(n),
        "hours": round(float(hours or 0.0), 6),
        "by": {g: breakdown(con, "segments_c", g) for g in groups},
        "duration_s": d.distribution(
            con, "segments_c", "duration_s", d.DURATION_S, weight=HOURS, group_by=groups
        ),
        "speech_prob": d.distribution(con, "segments_c", "speech_prob", d.RATIO),
    }


def quarantine(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    # an example names the item inside its source when there is one ("chats.jsonl#line 3")
    where = "source_uri || coalesce('#' || item_key, '')"
    rows = con.execute(
        f"SELECT step, reason_code, count(*), min({where}, {EXAMPLES}), "
        f"arg_min(detail, {where} || chr(0) || coalesce(detail, '')) FROM quarantine "
        "GROUP BY step, reason_code "
        "ORDER BY count(*) DESC, step, reason_code"
    ).fetchall()
    by_reason = [
        {
            "step": step,
            "reason_code": reason,
            "count": int(n),
            "examples": list(examples or []),
            "example_detail": detail,
        }
        for step, reason, n, examples, detail in rows
    ]
    return {"count": sum(r["count"] for r in by_reason), "by_reason": by_reason}


def conversations(con: duckdb.DuckDBPyConnection, has: set[str]) -> dict[str, Any]:
    """Turn-taking statistics of the diarized conversations (turns table) and of their duplex
    labels (events, frame_labels) when present.

    Floor-transfer offset (FTO): at each change of speaker between consecutive turns (ordered by
    start), the next turn's start minus the previous turn's end: positive is a gap, negative an
    overlap. `overlap_s` is how long the two turns overlap (a back-channel inside a turn overlaps
    for its whole length).
    """
    if "recordings" in has:
        _recording_corpus(con)
    length = (
        "(SELECT t.recording_id, any_value(r.duration_s) AS duration_s, "
        "any_value(r.corpus) AS corpus FROM turns t JOIN rec_corpus r USING (recording_id) "
        "GROUP BY t.recording_id)"
        if "recordings" in has
        else "(SELECT recording_id, max(end_s) AS duration_s, NULL AS corpus FROM turns "
        "GROUP BY recording_id)"
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP VIEW conv AS
        SELECT c.recording_id, c.duration_s, c.corpus, t.turns, t.speakers, t.backend
        FROM {length} c JOIN (
            SELECT recording_id, count(*) AS turns, count(DISTINCT speaker) AS speakers,
                   any_value(backend) AS backend FROM turns GROUP BY recording_id
        ) t USING (recording_id)"""
    )
    con.execute(
        """CREATE OR REPLACE TEMP VIEW transfers AS
        SELECT t.recording_id, c.corpus, start_s - prev_end AS fto_s,
               CASE WHEN start_s < prev_end THEN least(prev_end, end_s) - start_s END AS overlap_s
        FROM (SELECT recording_id, speaker, start_s, end_s,
                     lag(speaker) OVER w AS prev_speaker, lag(end_s) OVER w AS prev_end
              FROM turns WINDOW w AS (PARTITION BY recording_id ORDER BY start_s, end_s, speaker))
             AS t JOIN conv AS c USING (recording_id)
        WHERE prev_speaker IS NOT NULL AND prev_speaker <> speaker"""
    )
    n, hours, turns, transfers = _one(
        con,
        f"SELECT count(*), {d.exact_sum('duration_s')} / 3600.0, sum(turns), "
        "(SELECT count(*) FROM transfers) FROM conv",
    )
    out: dict[str, Any] = {
        "recordings": int(n),
        "hours": round(float(hours or 0.0), 6),
        "turns": int(turns or 0),
        "speaker_changes": int(transfers or 0),
        "by": {g: breakdown(con, "conv", g) for g in ("corpus", "backend")},
        "turns_per_minute": d.distribution(
            con,
            "(SELECT * FROM conv WHERE duration_s > 0)",
            "turns * 60.0 / duration_s",
            d.TURNS_PER_MIN,
            group_by=("corpus",),
        ),
        "floor_transfer_s": d.distribution(
            con, "transfers", "fto_s", d.FLOOR_TRANSFER_S, group_by=("corpus",)
        ),
        "gap_s": d.distribution(
            con,
            "(SELECT * FROM transfers WHERE fto_s >= 0)",
            "fto_s",
            d.GAP_S,
            group_by=("corpus",),
        ),
        "overlap_s": d.distribution(
            con,
            "(SELECT * FROM transfers WHERE overlap_s IS NOT NULL)",
            "overlap_s",
            d.GAP_S,
            group_by=("corpus",),
        ),
        "events": events(con, has) if "events" in has else None,
        "frame_labels": frame_labels(con) if "frame_labels" in has else None,
    }
    return out


def events(con: duckdb.DuckDBPyConnection, has: set[str]) -> dict[str, Any]:
    """Duplex events per type per hour of labelled conversation (each role choice counts: one
    recording gives two samples), the back-channel rate and the barge-in share."""
    if "frame_labels" in has:
        samples, hours = _one(
            con,
            f"SELECT count(DISTINCT sample_id), {d.exact_sum('duration_s')} / 3600.0 "
            "FROM frame_labels",
        )
    else:  # no durations: the last event of each sample bounds it from below
        samples, hours = _one(
            con,
            f"SELECT count(*), {d.exact_sum('t')} / 3600.0 FROM "
            "(SELECT max(time_s) AS t FROM events GROUP BY sample_id)",
        )
    hours = float(hours or 0.0)
    counts = {
        k: int(n)
        for k, n in con.execute(
            "SELECT event_type, count(*) FROM events GROUP BY event_type ORDER BY event_type"
        ).fetchall()
    }
    barge, user_takes = _one(
        con,
        "SELECT count(*) FILTER (WHERE barge_in), count(*) FROM events "
        "WHERE event_type = 'user_turn_taking'",
    )
    backchannels = counts.get("user_backchannel", 0)
    user_events = backchannels + counts.get("user_turn_taking", 0)
    return {
        "samples": int(samples or 0),
        "hours": round(hours, 6),
        "counts": counts,
        "per_hour": {k: round(n / hours, 3) if hours else None for k, n in counts.items()},
        "backchannel_per_minute": round(backchannels / (hours * 60), 4) if hours else None,
        "backchannel_share": round(backchannels / user_events, 4) if user_events else None,
        "barge_in_share": round(int(barge) / int(user_takes), 4) if user_takes else None,
        "user_gap_s": d.distribution(
            con,
            "(SELECT * FROM events WHERE gap_s IS NOT NULL)",
            "gap_s",
            d.GAP_S,
        ),
    }


def frame_labels(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """How the frames of the duplex samples split over the four classes (the predictor's balance)."""

    rows = con.execute(
        "SELECT l, count(*) FROM (SELECT unnest(labels) AS l FROM frame_labels) GROUP BY l"
    ).fetchall()
    total = sum(int(n) for _, n in rows)
    names = {m.value: m.name.lower() for m in FrameLabel}
    counts = {names.get(int(k), str(k)): int(n) for k, n in sorted(rows)}
    return {
        "frames": total,
        "counts": counts,
        "share": {k: round(n / total, 6) for k, n in counts.items()} if total else {},
    }
