"""Ingest stage 2: speech detection, speech ratio, SNR, segmentation.

Owns: turning decoded 16 kHz PCM into the final recording row, its segments and any
supervision-level quarantine rows. Labels: the recording row carries the item's whole-file
labels; a supervised segment its supervision's, else the recording's, per column; a VAD
segment the recording's (items.label_cells). The model is loaded once per worker (`__init__`) and
`segment` scores every channel of every recording it is given in one batched call. Emits no
audio. `__call__` is the same stage on a pyarrow batch (decode_stage.decode_batch's output),
for tests and Ray Data callers.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from minmo.audio import measure
from minmo.audio.vad import FRAME_SAMPLES, BatchedSileroVad, level_normalized, speech_timestamps
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.items import SourceItem, Supervision, label_cells
from pipelines.ingest.layouts.common import with_transcript
from schemas import ReasonCode, SegmentOrigin, segment_id
from schemas.quarantine import quarantine_row
from schemas.units import SAMPLE_RATE_HZ

OUTPUT_SCHEMA = pa.schema(
    [
        ("unit", pa.string()),
        ("order", pa.int64()),
        ("recording_json", pa.string()),  # "" when the item was quarantined
        ("segments_json", pa.string()),  # JSON list of segment rows
        ("quarantine_json", pa.string()),  # JSON list of quarantine rows
    ]
)
# A supervision may end a little past the decoded audio (rounding in the source's manifest).
END_TOLERANCE_S = 0.5


def merge_regions(
    regions: list[tuple[float, float]], max_gap_s: float, max_len_s: float
) -> list[tuple[float, float]]:
    """Join speech regions separated by short pauses, never beyond `max_len_s` per segment,
    so segments are whole phrases rather than VAD's word-sized fragments."""
    merged: list[tuple[float, float]] = []
    for start, end in regions:
        if merged and start - merged[-1][1] < max_gap_s and end - merged[-1][0] <= max_len_s:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def mean_prob(probs: np.ndarray, start_s: float, end_s: float) -> float:
    first = int(start_s * SAMPLE_RATE_HZ) // FRAME_SAMPLES
    last = max(first + 1, -(-int(end_s * SAMPLE_RATE_HZ) // FRAME_SAMPLES))
    window = probs[first:last]
    return float(window.mean()) if window.size else 0.0


Outcome = tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]
"""(recording row or None when quarantined, segment rows, quarantine rows) of one item."""


class VadSegmenter:
    """Loads the VAD once (call in a worker's __init__); segments batches of decoded items."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = IngestConfig(**config)
        self.vad = BatchedSileroVad(num_threads=1)

    def segment(
        self, decoded: list[tuple[SourceItem, dict[str, Any], np.ndarray]]
    ) -> list[Outcome]:
        """(item, measured info, (channels, frames) 16 kHz PCM) per recording -> outcomes in
        the same order; every channel of every recording is scored in one batched VAD call."""
        # The VAD scores level-normalised copies; measurements below read the recorded pcm.
        streams = [s for _, _, pcm in decoded for s in level_normalized(list(pcm))]
        probs = iter(self.vad.speech_probs(streams)) if streams else iter(())
        outcomes: list[Outcome] = []
        for item, info, pcm in decoded:
            channel_probs = [next(probs) for _ in range(pcm.shape[0])]
            try:
                outcomes.append(self.finish(item, info, pcm, channel_probs))
            except Exception as exc:  # a bug must not kill the job; quarantined and counted
                detail = f"vad stage: {type(exc).__name__}: {exc}"
                reject = quarantine_row(
                    item.source_uri, ReasonCode.INTERNAL_ERROR.value, detail, item_key=item.item_key
                )
                outcomes.append((None, [], [reject]))
        return outcomes

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Batch form: decode_stage.STAGE_SCHEMA rows -> OUTPUT_SCHEMA rows."""
        rows = batch.drop_columns(["pcm"]).to_pylist()
        pcm_column = batch.column("pcm")
        decoded = [
            (
                SourceItem.from_row(json.loads(row["item_json"])),
                json.loads(row["info_json"]),
                # A zero-copy view of the Arrow buffer: the audio is read, never written, here.
                np.frombuffer(pcm_column[i].as_buffer(), dtype="<f4").reshape(row["channels"], -1),
            )
            for i, row in enumerate(rows)
            if row["info_json"]
        ]
        outcomes = iter(self.segment(decoded))
        out: dict[str, list[Any]] = {name: [] for name in OUTPUT_SCHEMA.names}
        for row in rows:
            out["unit"].append(row["unit"])
            out["order"].append(row["order"])
            if not row["info_json"]:
                out["recording_json"].append("")
                out["segments_json"].append("[]")
                out["quarantine_json"].append(row["quarantine_json"])
                continue
            recording, segments, rejected = next(outcomes)
            out["recording_json"].append(json.dumps(recording) if recording else "")
            out["segments_json"].append(json.dumps(segments))
            # the decode stage's rows of a decoded item (its refused labels) come first
            out["quarantine_json"].append(json.dumps(json.loads(row["quarantine_json"]) + rejected))
        return pa.Table.from_pydict(out, schema=OUTPUT_SCHEMA)

    def finish(
        self,
        item: SourceItem,
        info: dict[str, Any],
        pcm: np.ndarray,
        channel_probs: list[np.ndarray],
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        cfg = self.config
        speech_masks = [p >= cfg.vad_threshold for p in channel_probs]
        union = np.logical_or.reduce(speech_masks) if speech_masks else np.zeros(0, bool)
        snrs = [
            measure.snr_db(measure.frame_powers(channel, FRAME_SAMPLES), mask)
            for channel, mask in zip(pcm, speech_masks, strict=True)
        ]
        known = [s for s in snrs if s is not None]
        recording = {
            **info,
            "source_uri": item.source_uri,
            "corpus": cfg.corpus or item.corpus,
            "speech_ratio": float(union.mean()) if union.size else 0.0,
            "snr_db": float(np.mean(known)) if known else None,
            "language": item.language,
            "transcript": item.text,
            "speaker": item.speaker,
            "task": cfg.task or item.task,
            "dup_of": None,
            **label_cells(item.labels),
        }
        supervisions = list(with_transcript(item).supervisions)
        if info["duration_s"] > cfg.max_segment_s:
            # A whole-file transcript of long audio cannot be cut without an alignment: such a
            # file is segmented by VAD and its transcript stays on the recording row.
            supervisions = [s for s in supervisions if not _whole_file(s)]
        if supervisions:
            segments, rejected = self.supervised_segments(item, info, supervisions, channel_probs)
        else:
            segments, rejected = self.vad_segments(info, channel_probs), []
            for segment in segments:  # a whole-file label covers every segment of the file
                segment.update(label_cells(item.labels))
        return recording, segments, rejected

    def vad_segments(
        self, info: dict[str, Any], channel_probs: list[np.ndarray]
    ) -> list[dict[str, Any]]:
        cfg = self.config
        samples = int(round(info["duration_s"] * SAMPLE_RATE_HZ))
        segments = []
        for channel, probs in enumerate(channel_probs):
            regions = speech_timestamps(
                probs,
                samples,
                threshold=cfg.vad_threshold,
                min_speech_duration_ms=int(cfg.min_speech_s * 1000),
                max_speech_duration_s=cfg.max_segment_s,
                min_silence_duration_ms=int(cfg.min_silence_s * 1000),
                speech_pad_ms=int(cfg.speech_pad_s * 1000),
                time_resolution=3,
            )
            for start, end in merge_regions(regions, cfg.merge_gap_s, cfg.max_segment_s):
                segments.append(
                    _segment(
                        info["recording_id"],
                        channel,
                        start,
                        end,
                        mean_prob(probs, start, end),
                        SegmentOrigin.VAD,
                    )
                )
        return segments

    def supervised_segments(
        self,
        item: SourceItem,
        info: dict[str, Any],
        supervisions: list[Supervision],
        channel_probs: list[np.ndarray],
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        duration = info["duration_s"]
        segments, rejected = [], []
        for sup in supervisions:
            end = duration if sup.end_s is None else sup.end_s
            channel = 0 if sup.channel is None else sup.channel
            problem = None
            if sup.start_s < 0 or end <= sup.start_s:
                problem = f"[{sup.start_s}, {end}] is empty or negative"
            elif sup.start_s >= duration or end > duration + END_TOLERANCE_S:
                problem = f"[{sup.start_s}, {end}] lies outside the {duration:.2f} s of audio"
            elif channel >= info["channels"]:
                problem = f"channel {channel} but the audio has {info['channels']}"
            if problem:
                rejected.append(
                    quarantine_row(
                        item.source_uri,
                        ReasonCode.BAD_SEGMENT.value,
                        problem,
                        item_key=sup.item_key,
                    )
                )
                continue
            end = min(end, duration)
            if (
                sup.text is not None
                and len(sup.text.strip()) / (end - sup.start_s) > self.config.max_chars_per_s
            ):
                rejected.append(
                    quarantine_row(
                        item.source_uri,
                        ReasonCode.TEXT_AUDIO_MISMATCH.value,
                        f"{len(sup.text.strip())} characters for {end - sup.start_s:.2f} s",
                        item_key=sup.item_key,
                    )
                )
                continue
            segment = _segment(
                info["recording_id"],
                channel,
                sup.start_s,
                end,
                mean_prob(channel_probs[channel], sup.start_s, end),
                SegmentOrigin.SUPERVISION,
            )
            segment.update(
                text=sup.text,
                speaker=sup.speaker or item.speaker,
                language=sup.language or item.language,
                **label_cells(sup.labels, item.labels),
            )
            segments.append(segment)
        return segments, rejected


def _whole_file(sup: Supervision) -> bool:
    return sup.start_s == 0.0 and sup.end_s is None


def _segment(
    rec_id: str, channel: int, start_s: float, end_s: float, prob: float, origin: SegmentOrigin
) -> dict[str, Any]:
    start_s, end_s = round(start_s, 3), round(end_s, 3)
    return {
        "segment_id": segment_id(rec_id, channel, start_s, end_s),
        "recording_id": rec_id,
        "channel": channel,
        "start_s": start_s,
        "end_s": end_s,
        "duration_s": round(end_s - start_s, 3),
        "speech_prob": prob,
        "origin": origin.value,
        "text": None,
        "speaker": None,
        "language": None,
        **label_cells(),
    }
