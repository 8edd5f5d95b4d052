"""The stats.json contract: what `minmo stats` writes, as a versioned JSON Schema.

Every section is null when its input is absent from the build (no turns table: no
`conversations`). Units are in the key names (`_s`, `hours`, `bytes`, `_dbfs`, `_db`).

A *distribution* (`$defs/dist`) is a fixed-edge histogram plus moments and approximate
quantiles: `counts[i]` items fell in `[edges[i], edges[i+1])`, `underflow`/`overflow` below the
first or at/after the last edge, `nulls` had no value; `hours[i]` (duration histograms only) is
the audio in that bin. `by.<dimension>.<value>` repeats it per corpus / language / task / stage.
Edges are fixed per metric (pipelines/stats/dist.py), so two builds compare bin for bin.

A shard stage (`shards.<stage>`) always has the distributions of samples, hours and bytes per
shard (`per_shard_dist`, fixed R10 bins) and its worst shards (`worst.<criterion>`, worst first,
e.g. `fewest_samples`, `most_bytes`); it lists every shard in `per_shard` only up to the
config's `max_shard_rows` shards, and has `per_shard: null` beyond.

A *breakdown* (`$defs/breakdown`) is `[{key, count, hours}]`, most hours first.

`eval` (absent in stats.json written before it) lists the eval.json files found under
DIR/eval/ or given with `--eval`: per checkpoint its stage, training `step`, shard directory and
per task the headline figures (`metrics`: `wer`, `accuracy`, `f1.<event>@<K>`...,
pipelines/stats/evals.py), ordered by shard directory, stage and step.
"""

from __future__ import annotations

from typing import Any

from schemas._document import validate_document

# 2: shard stages gained `per_shard_dist` and `worst`; `per_shard` is null past the config's
# `max_shard_rows` shards in a stage.
STATS_VERSION = 2

_NUM = {"type": ["number", "null"]}
_COUNT = {"type": "integer", "minimum": 0}

_GROUP: dict[str, Any] = {
    "type": "object",
    "required": [
        "n",
        "nulls",
        "mean",
        "min",
        "max",
        "quantiles",
        "counts",
        "underflow",
        "overflow",
    ],
    "properties": {
        "n": _COUNT,
        "nulls": _COUNT,
        "sum": _NUM,
        "mean": _NUM,
        "min": _NUM,
        "max": _NUM,
        "quantiles": {
            "type": "object",
            "description": "approximate p05, p50 (median) and p95",
            "required": ["p05", "p50", "p95"],
            "additionalProperties": _NUM,
        },
        "counts": {"type": "array", "items": _COUNT},
        "hours": {"type": "array", "items": {"type": "number"}},
        "underflow": _COUNT,
        "overflow": _COUNT,
    },
}

STATS_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "minmo stats.json",
    "type": "object",
    "required": [
        "schema",
        "version",
        "inputs",
        "recordings",
        "segments",
        "quarantine",
        "conversations",
        "samples",
        "shards",
        "errors",
    ],
    "$defs": {
        "dist": {
            **_GROUP,
            "required": [*_GROUP["required"], "unit", "edges", "by"],
            "properties": {
                **_GROUP["properties"],
                "unit": {"type": "string"},
                "edges": {"type": "array", "items": {"type": "number"}, "minItems": 2},
                "log_x": {"type": "boolean"},
                "by": {
                    "type": "object",
                    "description": "dimension -> value -> the same distribution for that value",
                    "additionalProperties": {"type": "object", "additionalProperties": _GROUP},
                },
            },
        },
        "shard": {
            "type": "object",
            "required": ["name", "samples", "hours", "bytes"],
            "properties": {
                "name": {"type": "string"},
                "samples": _COUNT,
                "hours": {"type": "number"},
                "bytes": _COUNT,
            },
        },
        "breakdown": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "count", "hours"],
                "properties": {
                    "key": {"type": "string"},
                    "count": _COUNT,
                    "hours": {"type": "number"},
                },
            },
        },
    },
    "properties": {
        "eval": {
            "type": "array",
            "description": "one entry per eval.json (pipelines/stats/evals.py)",
            "items": {
                "type": "object",
                "required": ["source", "checkpoint", "stage", "step", "shards", "samples", "tasks"],
                "properties": {
                    "source": {"type": "string"},
                    "checkpoint": {"type": "string"},
                    "stage": {"type": "string"},
                    "step": {"type": ["integer", "null"]},
                    "shards": {"type": "string"},
                    "samples": _COUNT,
                    "tasks": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "required": ["samples", "metrics"],
                            "properties": {
                                "samples": _COUNT,
                                "metrics": {
                                    "type": "object",
                                    "additionalProperties": {"type": "number"},
                                },
                            },
                        },
                    },
                },
            },
        },
        "errors": {
            "type": "array",
            "description": "inputs or sections that could not be read: left out, not fatal",
            "items": {
                "type": "object",
                "required": ["section", "error"],
                "properties": {
                    "section": {"type": "string"},
                    "source": {"type": "string"},
                    "error": {"type": "string"},
                },
            },
        },
        "schema": {"const": "minmo.stats"},
        "version": {"const": STATS_VERSION},
        "inputs": {
            "type": "object",
            "description": "what was found: table -> files, shard stage -> directories, rows",
            "required": ["root", "tables", "shard_stages", "rows"],
        },
        "recordings": {
            "type": ["object", "null"],
            "required": [
                "count",
                "hours",
                "bytes",
                "by",
                "duration_s",
                "rms_dbfs",
                "peak_dbfs",
                "clipping_ratio",
                "snr_db",
                "speech_ratio",
                "speakers",
                "duplicates",
            ],
            "properties": {
                "count": _COUNT,
                "hours": {"type": "number"},
                "bytes": _COUNT,
                "by": {
                    "description": "corpus, language, task, container -> breakdown",
                    "type": "object",
                    "additionalProperties": {"$ref": "#/$defs/breakdown"},
                },
                "duration_s": {"$ref": "#/$defs/dist"},
                "rms_dbfs": {"$ref": "#/$defs/dist"},
                "peak_dbfs": {"$ref": "#/$defs/dist"},
                "clipping_ratio": {"$ref": "#/$defs/dist"},
                "snr_db": {"$ref": "#/$defs/dist"},
                "speech_ratio": {"$ref": "#/$defs/dist"},
                "speakers": {
                    "type": "array",
                    "description": "per corpus: distinct labelled speakers, distinct diarized "
                    "voices (recording-local labels, counted per recording)",
                    "items": {
                        "type": "object",
                        "required": ["corpus", "speakers", "diarized_speakers"],
                    },
                },
                "duplicates": {
                    "type": "object",
                    "description": "recordings whose decoded PCM (content_sha1) an earlier one has",
                    "required": ["count", "hours", "by_corpus"],
                    "properties": {
                        "count": _COUNT,
                        "hours": {"type": "number"},
                        "by_corpus": {"$ref": "#/$defs/breakdown"},
                    },
                },
            },
        },
        "segments": {
            "type": ["object", "null"],
            "required": ["count", "hours", "by", "duration_s", "speech_prob"],
            "properties": {
                "duration_s": {"$ref": "#/$defs/dist"},
                "speech_prob": {"$ref": "#/$defs/dist"},
            },
        },
        "quarantine": {
            "type": "object",
            "required": ["count", "by_reason"],
            "properties": {
                "count": _COUNT,
                "by_reason": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["step", "reason_code", "count", "examples"],
                        "properties": {
                            "count": _COUNT,
                            "examples": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                },
            },
        },
        "conversations": {
            "type": ["object", "null"],
            "description": "from turns (+ events, frame_labels): floor-transfer offset = next "
            "speaker's start - previous turn's end (gap > 0, overlap < 0)",
            "required": [
                "recordings",
                "hours",
                "turns",
                "turns_per_minute",
                "floor_transfer_s",
                "gap_s",
                "overlap_s",
                "events",
                "frame_labels",
            ],
            "properties": {
                "turns_per_minute": {"$ref": "#/$defs/dist"},
                "floor_transfer_s": {"$ref": "#/$defs/dist"},
                "gap_s": {"$ref": "#/$defs/dist"},
                "overlap_s": {"$ref": "#/$defs/dist"},
                "events": {
                    "type": ["object", "null"],
                    "required": [
                        "samples",
                        "hours",
                        "counts",
                        "per_hour",
                        "backchannel_per_minute",
                        "backchannel_share",
                    ],
                },
                "frame_labels": {"type": ["object", "null"], "required": ["frames", "counts"]},
            },
        },
        "samples": {
            "type": ["object", "null"],
            "description": "from the shards' json members",
            "required": ["count", "hours", "by", "by_stage_task", "duration_s", "tokens"],
            "properties": {"duration_s": {"$ref": "#/$defs/dist"}},
        },
        "shards": {
            "type": "object",
            "description": "stage -> balance and mixture, from each stage's index.json",
            "additionalProperties": {
                "type": "object",
                "required": [
                    "shards",
                    "samples",
                    "hours",
                    "bytes",
                    "per_shard",
                    "per_shard_dist",
                    "worst",
                    "spread",
                    "speech_tokens_per_s",
                    "mixture",
                ],
                "properties": {
                    "shards": _COUNT,
                    "per_shard": {
                        "type": ["array", "null"],
                        "description": "every shard, up to max_shard_rows; null beyond",
                        "items": {"$ref": "#/$defs/shard"},
                    },
                    "per_shard_dist": {
                        "type": "object",
                        "required": ["samples", "hours", "bytes"],
                        "additionalProperties": {"$ref": "#/$defs/dist"},
                    },
                    "worst": {
                        "type": "object",
                        "description": "criterion -> its worst shards, worst first",
                        "additionalProperties": {
                            "type": "array",
                            "items": {"$ref": "#/$defs/shard"},
                        },
                    },
                    "mixture": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["task", "weight", "samples", "target_share", "share"],
                        },
                    },
                    "filtered": {
                        "type": "array",
                        "description": "per task and quality filter: the samples and hours it "
                        "left out (from index.json; absent in stats.json before filters)",
                        "items": {
                            "type": "object",
                            "required": ["task", "reason", "samples", "hours"],
                        },
                    },
                    "splits": {
                        "type": "object",
                        "description": "a split stage's train / valid / test: shards, samples, "
                        "hours; empty when the stage is one set",
                        "additionalProperties": {
                            "type": "object",
                            "required": ["shards", "samples", "hours"],
                        },
                    },
                },
            },
        },
    },
}


class StatsSchemaError(ValueError):
    """A stats.json does not match its schema; the message gives the path inside the document."""


def validate_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """Raise StatsSchemaError unless `stats` keeps STATS_JSON_SCHEMA; return it unchanged."""
    return validate_document(
        stats,
        STATS_JSON_SCHEMA,
        STATS_VERSION,
        "stats.json",
        "rerun `minmo stats` on the build it summarises",
        StatsSchemaError,
    )
