"""Synthetic build tables for the scale benchmarks: valid `recordings` and `segments` tables of any
size, written part by part so that memory stays bounded however many rows they hold.

Two layouts, one per user:

* `write_synthetic_build` (bench/stats_scale.py, tests/stats): 50 segments per recording, random
  durations and languages, source URIs that point nowhere, no transcripts, Parquet parts of 250k
  rows. Only the statistics read these tables.
* `write_unit_build` (bench/shards_scale.py): the layout ingest commits, `DIR/<table>/<unit>_0000
  .parquet` plus `DIR/_state/ingest/done/<unit>.json` per unit, so that the shard planner sees
  one unit per file prefix. Recordings point at a few real clips (`real_clips`) with their real
  durations and transcripts, so the same build can go through the real shard writers.

Both fill the measured columns with plausible values (`recordings_table`). Columns are built with
numpy / pyarrow per part, never row by row. Must not: run any pipeline step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from schemas import RECORDINGS, SEGMENTS
from schemas.labels import LABEL_FIELDS
from schemas.units import SAMPLE_RATE_HZ

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def signal_measures(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Plausible peak / RMS / clipping / speech ratio / SNR columns, drawn in a fixed order (so
    that a seed always gives the same table)."""
    return {
        "peak_dbfs": rng.uniform(-12, 0, n).astype(np.float32),
        "rms_dbfs": rng.normal(-25, 5, n).astype(np.float32),
        "clipping_ratio": rng.exponential(1e-4, n).astype(np.float32),
        "speech_ratio": rng.uniform(0.2, 1.0, n).astype(np.float32),
        "snr_db": rng.normal(25, 8, n).astype(np.float32),
    }


def recordings_table(
    ids: np.ndarray,
    source_uri: np.ndarray,
    corpus: np.ndarray,
    duration_s: np.ndarray,
    file_bytes: np.ndarray,
    language: np.ndarray,
    speaker: np.ndarray,
    measures: dict[str, np.ndarray],
    transcript: np.ndarray | pa.Array | None = None,
    container: str = "flac",
) -> pa.Table:
    """A validated recordings table (`measures` from `signal_measures`). Every content_sha1 is
    distinct and dup_of null: recordings that share a source file still all count as distinct
    (none is skipped as a copy)."""
    n = len(ids)
    table = pa.table(
        {
            "recording_id": ids,
            "source_uri": source_uri,
            # items.source_key for a URI outside any listed root: the corpus and the whole URI
            "source_key": np.char.add(np.char.add(np.asarray(corpus, str), ":"), source_uri),
            "corpus": corpus,
            "container": np.full(n, container),
            "sample_rate_hz": np.full(n, SAMPLE_RATE_HZ, np.int32),
            "source_channels": np.ones(n, np.int16),
            "channels": np.ones(n, np.int16),
            "bits": np.full(n, 16, np.int16),
            "duration_s": duration_s,
            "bytes": file_bytes,
            "content_sha1": np.char.add("sha", ids),
            **measures,
            "language": language,
            "transcript": pa.nulls(n, pa.string()) if transcript is None else transcript,
            "speaker": speaker,
            "task": np.full(n, "asr"),
            "dup_of": pa.nulls(n, pa.string()),
            **_no_labels(n),
        }
    )
    return RECORDINGS.conform(table)


def _no_labels(n: int) -> dict[str, pa.Array]:
    """The label columns, all null: synthetic rows carry no corpus labels."""
    return {f.name: pa.nulls(n, f.type) for f in LABEL_FIELDS}


def segment_ids(recording_ids: np.ndarray, start_s: np.ndarray, end_s: np.ndarray) -> np.ndarray:
    """`schemas.segments.segment_id` for whole columns (channel 0)."""
    start_ms = np.char.zfill(np.round(start_s * 1000).astype(np.int64).astype(str), 9)
    end_ms = np.char.zfill(np.round(end_s * 1000).astype(np.int64).astype(str), 9)
    return np.char.add(np.char.add(np.char.add(recording_ids, "-c0-"), start_ms), "-" + end_ms)


def segments_table(
    ids: np.ndarray,
    recording_ids: np.ndarray,
    start_s: np.ndarray,
    end_s: np.ndarray,
    speech_prob: np.ndarray,
    origin: str,
    language: np.ndarray,
    text: np.ndarray | pa.Array | None = None,
    speaker: np.ndarray | pa.Array | None = None,
    duration_s: np.ndarray | None = None,
) -> pa.Table:
    """A validated segments table on channel 0 (duration_s: end_s - start_s unless given)."""
    n = len(ids)
    table = pa.table(
        {
            "segment_id": ids,
            "recording_id": recording_ids,
            "channel": np.zeros(n, np.int16),
            "start_s": start_s,
            "end_s": end_s,
            "duration_s": end_s - start_s if duration_s is None else duration_s,
            "speech_prob": speech_prob,
            "origin": np.full(n, origin),
            "text": pa.nulls(n, pa.string()) if text is None else text,
            "speaker": pa.nulls(n, pa.string()) if speaker is None else speaker,
            "language": language,
            **_no_labels(n),
        }
    )
    return SEGMENTS.conform(table)


# ---- the stats layout ------------------------------------------------------------------------

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
    measures = signal_measures(rng, n_rec)
    rec = recordings_table(
        ids,
        source_uri=np.char.add("s3://corpus/", ids),
        corpus=rec_corpus,
        duration_s=rec_dur,
        file_bytes=(rec_dur * 32000).astype(np.int64),
        language=languages[rng.integers(0, len(languages), n_rec)],
        speaker=np.char.add("spk", (np.arange(n_rec) % 5000).astype(str)),
        measures=measures,
    )
    pq.write_table(rec, root / "recordings" / "part-0000.parquet")
    total_s = 0.0
    for part, start in enumerate(range(0, n_segments, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, n_segments - start)
        owner = (np.arange(start, start + n) // SEGMENTS_PER_RECORDING) % n_rec
        dur = rng.uniform(0.5, 30.0, n)
        total_s += float(dur.sum())
        begin = rng.uniform(0, 30, n)
        seg = segments_table(
            np.char.add(ids[owner], np.char.add("-", np.arange(n).astype(str))),
            ids[owner],
            begin,
            begin + dur,
            speech_prob=rng.uniform(0.5, 1.0, n).astype(np.float32),
            origin="vad",
            language=languages[rng.integers(0, len(languages), n)],
            duration_s=dur,
        )
        pq.write_table(seg, root / "segments" / f"part-{part:04d}.parquet")
    return {"segments": n_segments, "segment_hours": total_s / 3600, "recordings": n_rec}


# ---- the ingest (unit) layout ----------------------------------------------------------------

# Short English 16 kHz mono clips with human transcripts of at least four words (so that
# contextual_asr gets built), as `<folder>/<file>` under ../shared/data with the key in the
# folder's Kaldi-style `text` file.
CLIP_FOLDERS = ("asr_speechbrain_en", "asr_wenet_zh_en", "asr_lhotse_libri_lj")
MIN_WORDS = 4


@dataclass(frozen=True)
class RealClip:
    """One source file the synthetic recordings point at (mono: `channels` is always 1)."""

    path: str
    duration_s: float
    channels: int
    file_bytes: int
    transcript: str
    speaker: str


def real_clips(data: Path = DATA) -> list[RealClip]:
    """The English 16 kHz mono clips of `data` with a transcript of >= 4 words, sorted by path;
    their durations and channels as read from the files."""
    clips = []
    for folder in CLIP_FOLDERS:
        texts = {}
        for line in (data / folder / "text").read_text(encoding="utf-8").splitlines():
            key, _, text = line.partition(" ")
            texts[key] = text.strip()
        for path in sorted((data / folder).iterdir()):
            text = texts.get(path.stem, "")
            if path.suffix not in (".wav", ".flac") or len(text.split()) < MIN_WORDS:
                continue
            if not text.isascii():
                continue
            info = sf.info(str(path))
            if info.samplerate != SAMPLE_RATE_HZ or info.channels != 1:
                continue
            clips.append(
                RealClip(
                    path=str(path.resolve()),
                    duration_s=info.frames / info.samplerate,
                    channels=info.channels,
                    file_bytes=path.stat().st_size,
                    transcript=text,
                    speaker=path.stem.split("_")[0],
                )
            )
    if not clips:
        raise FileNotFoundError(f"no English 16 kHz mono clips with transcripts under {data}")
    return clips


RECORDINGS_PER_UNIT = 256
SEGMENTS_PER_CLIP = 4


def unit_id(seed: int, index: int) -> str:
    """An ingest-like unit id (16 hex); the same (seed, index) always names the same unit."""
    return hashlib.sha1(f"synthetic:{seed}:{index}".encode()).hexdigest()[:16]


def write_unit(
    root: Path, unit: str, n_segments: int, clips: list[RealClip], rng: np.random.Generator
) -> dict[str, Any]:
    """One committed ingest unit of `n_segments` segments: recordings (one per
    SEGMENTS_PER_CLIP segments, each a randomly chosen clip) cut into equal spans that cover the
    clip, each carrying the clip's transcript; then its done marker, as the ingest ledger writes
    it. Returns the unit's counts."""
    n_rec = -(-n_segments // SEGMENTS_PER_CLIP)
    pick = rng.integers(0, len(clips), n_rec)
    dur = np.array([c.duration_s for c in clips])[pick]
    uri = np.array([c.path for c in clips])[pick]
    text = np.array([c.transcript for c in clips], dtype=object)[pick]
    speaker = np.array([c.speaker for c in clips])[pick]
    rec_ids = np.char.add(f"{unit}r", np.char.zfill(np.arange(n_rec).astype(str), 5))
    rec = recordings_table(
        rec_ids,
        source_uri=uri,
        corpus=np.full(n_rec, "synthetic"),
        duration_s=dur,
        file_bytes=np.array([c.file_bytes for c in clips], np.int64)[pick],
        language=np.full(n_rec, "en"),
        speaker=speaker,
        measures=signal_measures(rng, n_rec),
        transcript=pa.array(text, pa.string()),
        container="wav",
    )
    owner = np.arange(n_segments) // SEGMENTS_PER_CLIP
    j = np.arange(n_segments) % SEGMENTS_PER_CLIP
    start = np.round(dur[owner] * j / SEGMENTS_PER_CLIP, 3)
    end = np.round(dur[owner] * (j + 1) / SEGMENTS_PER_CLIP, 3)
    seg = segments_table(
        segment_ids(rec_ids[owner], start, end),
        rec_ids[owner],
        start,
        end,
        speech_prob=np.ones(n_segments, np.float32),
        origin="supervision",
        language=np.full(n_segments, "en"),
        text=pa.array(text[owner], pa.string()),
        speaker=speaker[owner],
    )
    for name, table in (("recordings", rec), ("segments", seg)):
        (root / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / name / f"{unit}_0000.parquet")
    counts = {
        "recordings": n_rec,
        "segments": n_segments,
        "audio_s": float(dur.sum()),
        "duplicates": 0,
        "files": n_rec,
        "already_ingested": 0,
        "quarantined": {},
    }
    done = root / "_state" / "ingest" / "done"
    done.mkdir(parents=True, exist_ok=True)
    (done / f"{unit}.json").write_text(json.dumps({"unit": unit, **counts}, indent=1))
    return counts


def write_unit_build(
    root: Path, n_segments: int, clips: list[RealClip], seed: int = 0, first_unit: int = 0
) -> dict[str, int]:
    """Units of RECORDINGS_PER_UNIT recordings (the last one smaller) holding `n_segments`
    segments, numbered from `first_unit` (an append continues the numbering: new unit ids).
    One unit in memory at a time. Returns the segments, recordings and units written."""
    rng = np.random.default_rng([seed, first_unit])
    per_unit = RECORDINGS_PER_UNIT * SEGMENTS_PER_CLIP
    totals = {"segments": 0, "recordings": 0, "units": 0}
    index = first_unit
    while totals["segments"] < n_segments:
        n = min(per_unit, n_segments - totals["segments"])
        counts = write_unit(root, unit_id(seed, index), n, clips, rng)
        totals["segments"] += n
        totals["recordings"] += int(counts["recordings"])
        totals["units"] += 1
        index += 1
    return totals
