"""Ingest stage 1: read each source file, decode, check, measure, resample.

Owns: everything about one item that needs only its own bytes. `decode_or_quarantine` gives,
per item, either its measurements plus 16 kHz float32 PCM for the VAD stage, or quarantine
rows; it never raises for a bad item: the reason goes into the row. It also turns the item's
refused labels (items.LabelProblem, found by the layout reader) into `bad_label` rows, whatever
becomes of the audio: the recording is ingested without those labels. A recording stored one
file per channel (minmo/io/channel_uri.py) is read, vetted and stacked by minmo/audio/load.py
with the config's `max_channel_skew_s`. The ingest worker
(pipelines/ingest/worker.py) calls it in the same process as the VAD, so PCM never leaves that
process; `decode_batch` is the same stage on a pyarrow batch, for tests and Ray Data callers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from minmo.audio import measure
from minmo.audio.decode import DecodeError
from minmo.audio.load import load_source
from minmo.audio.resample import resample
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.items import SourceItem
from schemas import ReasonCode
from schemas.quarantine import Rejected, quarantine_row
from schemas.recordings import recording_id
from schemas.units import SAMPLE_RATE_HZ

STAGE_SCHEMA = pa.schema(
    [
        ("unit", pa.string()),
        ("order", pa.int64()),
        ("item_json", pa.string()),
        ("info_json", pa.string()),  # measured recording fields, "" when quarantined
        ("quarantine_json", pa.string()),  # JSON list of quarantine rows
        ("channels", pa.int16()),
        ("pcm", pa.large_binary()),  # (channels, frames) float32 little-endian at 16 kHz
    ]
)
# Bit depths decode.py reports only for integer PCM; 32 is ambiguous (int or float), None lossy.
INTEGER_PCM_BITS = (8, 16, 24)


@dataclass
class Decoded:
    info: dict[str, Any]
    pcm_16k: np.ndarray  # (channels, frames) float32
    padded_notes: list[str] = field(default_factory=list)
    """A multi-source recording's padded channel files, one detail each (`channels_padded`)."""


def decode_item(item: SourceItem, config: IngestConfig) -> Decoded:
    """Decode and vet one item; raise Rejected with the first rule it breaks."""
    try:
        loaded = load_source(item.source_uri, config.storage_options, config.max_channel_skew_s)
    except DecodeError as exc:
        raise Rejected(ReasonCode.UNDECODABLE, str(exc)) from exc
    audio = loaded.audio
    if audio.frames == 0:
        raise Rejected(ReasonCode.EMPTY_AUDIO, "decoded to 0 samples")
    # Integer PCM (8/16/24-bit, A-law, mu-law) decodes to finite floats by construction: only
    # float and lossy decodes can hold NaN/Inf, so only they pay for the scan (~10% of a WAV).
    if audio.bits not in INTEGER_PCM_BITS and measure.has_non_finite(audio.samples):
        bad = int(np.count_nonzero(~np.isfinite(audio.samples)))
        raise Rejected(ReasonCode.NON_FINITE_SAMPLES, f"{bad} NaN/Inf samples")
    if audio.sample_rate_hz < config.min_sample_rate_hz:
        raise Rejected(
            ReasonCode.UNSUPPORTED_SAMPLE_RATE,
            f"{audio.sample_rate_hz} Hz is below the minimum {config.min_sample_rate_hz} Hz",
        )
    kept = measure.fold_dual_mono(audio.samples)
    if kept.shape[0] > config.max_channels:
        raise Rejected(
            ReasonCode.UNSUPPORTED_CHANNELS,
            f"{kept.shape[0]} channels; at most {config.max_channels} are supported",
        )
    duration_s = audio.duration_s
    if duration_s < config.min_duration_s:
        raise Rejected(ReasonCode.TOO_SHORT, f"{duration_s:.3f} s < {config.min_duration_s} s")
    if duration_s > config.max_duration_s:
        raise Rejected(ReasonCode.TOO_LONG, f"{duration_s:.1f} s > {config.max_duration_s} s")
    if item.text is not None and len(item.text.strip()) / duration_s > config.max_chars_per_s:
        raise Rejected(
            ReasonCode.TEXT_AUDIO_MISMATCH,
            f"{len(item.text.strip())} characters of transcript for {duration_s:.2f} s of audio",
        )
    sha1 = measure.content_sha1(audio.samples, audio.sample_rate_hz)
    info = {
        "recording_id": recording_id(item.key, sha1),
        "source_key": item.key,
        "container": audio.container,
        "sample_rate_hz": audio.sample_rate_hz,
        "source_channels": audio.channels,
        "channels": int(kept.shape[0]),
        "bits": audio.bits,
        "duration_s": duration_s,
        "bytes": loaded.bytes,
        "content_sha1": sha1,
        "peak_dbfs": measure.peak_dbfs(kept),
        "rms_dbfs": measure.rms_dbfs(kept),
        "clipping_ratio": measure.clipping_ratio(kept),
    }
    notes = [
        f"channel file {uri} ({duration_s - seconds:.3f} s) padded with {seconds:.3f} s of "
        f"silence to the longest channel ({duration_s:.3f} s)"
        for uri, seconds in loaded.padded.items()
    ]
    pcm = resample(kept, audio.sample_rate_hz, SAMPLE_RATE_HZ)
    return Decoded(info=info, pcm_16k=pcm, padded_notes=notes)


def decode_or_quarantine(
    item: SourceItem, config: IngestConfig
) -> tuple[Decoded | None, list[dict[str, Any]]]:
    """`decode_item`, with every failure turned into a quarantine row instead of an exception.
    The rows always include the item's `bad_label` rows, decoded or not, and a decoded
    multi-source recording's `channels_padded` notes (the audio is kept)."""
    labels = [
        _reject_row(item, ReasonCode.BAD_LABEL, p.detail, p.item_key) for p in item.label_problems
    ]
    try:
        decoded = decode_item(item, config)
    except Rejected as rejected:
        return None, [_reject_row(item, rejected.reason, rejected.detail), *labels]
    except Exception as exc:  # a bug must not kill the job; it is quarantined and counted
        detail = f"{type(exc).__name__}: {exc}"
        return None, [_reject_row(item, ReasonCode.INTERNAL_ERROR, detail), *labels]
    notes = [_reject_row(item, ReasonCode.CHANNELS_PADDED, n) for n in decoded.padded_notes]
    return decoded, [*notes, *labels]


def decode_batch(batch: pa.Table, config: dict[str, Any]) -> pa.Table:
    """Batch form: rows (unit, order, item_json) -> STAGE_SCHEMA rows (PCM as bytes)."""
    cfg = IngestConfig(**config)
    out: dict[str, list[Any]] = {name: [] for name in STAGE_SCHEMA.names}
    units = (
        batch.column("unit").to_pylist() if "unit" in batch.column_names else [""] * batch.num_rows
    )
    for unit, order, item_json in zip(
        units, batch.column("order").to_pylist(), batch.column("item_json").to_pylist(), strict=True
    ):
        item = SourceItem.from_row(json.loads(item_json))
        info_json, channels, pcm = "", 0, b""
        decoded, quarantine = decode_or_quarantine(item, cfg)
        if decoded is not None:
            info_json = json.dumps(decoded.info)
            channels = decoded.pcm_16k.shape[0]
            pcm = decoded.pcm_16k.astype("<f4", copy=False).tobytes()
        out["unit"].append(unit)
        out["order"].append(order)
        out["item_json"].append(item_json)
        out["info_json"].append(info_json)
        out["quarantine_json"].append(json.dumps(quarantine))
        out["channels"].append(channels)
        out["pcm"].append(pcm)
    return pa.Table.from_pydict(out, schema=STAGE_SCHEMA)


def _reject_row(
    item: SourceItem, reason: ReasonCode, detail: str, item_key: str | None = None
) -> dict[str, Any]:
    return quarantine_row(
        item.source_uri,
        reason.value,
        detail,
        item_key=item_key or item.item_key,
        source_key=item.source_key,
    )
