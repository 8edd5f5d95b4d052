"""The eval.json contract: what `minmo eval` writes, as a versioned JSON Schema.

One document per (checkpoint, shard directory): where both came from (and the checkpoint's
training `step`, and a `fingerprint` of what was scored, by which a rerun keeps the file), then `tasks.<task>`, one
entry per task present in the shards, each with `samples` and the metrics of its kind:

* text tasks scored on decoded text (asr, contextual_asr): `wer` and/or `cer` (`$defs/rate`:
  pooled edit counts, rate = edits / reference units), `by_language`, and for contextual_asr
  `hotword_recall`; `examples` holds a few (reference, hypothesis) pairs;
* classification tasks (language_id, emotion, audio_event, speaker_analysis): `accuracy` and
  `confusion` (rows = reference classes, columns = `labels`);
* speech_translation: sacrebleu `bleu` and `chrf` (0-100), pooled and `by_target_language`;
* s2t_chat: `loss_per_token` (teacher-forced text cross-entropy, nats) over `tokens`;
* tts / instruct_tts / s2s_chat / s2s_style_chat: `top1_accuracy` and `perplexity` of the speech
  tokens under teacher forcing, over `tokens`;
* duplex: `f1.<event type>.<K>` (`$defs/f1`), `frame_accuracy`, `backchannels` (the reference
  user back-channels) and, when there are any, `backchannel_accuracy.<K>`: the share of them at
  which the predictor does not stop within K frames (minmo/duplex/evaluate.py).

Every rate and count is computed from pooled counts, never a mean of per-sample rates.
"""

from __future__ import annotations

from typing import Any

from schemas._document import validate_document

EVAL_VERSION = 1

_COUNT = {"type": "integer", "minimum": 0}
_UNIT = {"type": "number", "minimum": 0, "maximum": 1}
_RATE = {
    "type": "object",
    "required": ["rate", "substitutions", "insertions", "deletions", "reference_units"],
    "properties": {
        "rate": {"type": "number", "minimum": 0},
        "substitutions": _COUNT,
        "insertions": _COUNT,
        "deletions": _COUNT,
        "reference_units": _COUNT,
    },
    "additionalProperties": False,
}
_F1 = {
    "type": "object",
    "required": ["f1", "precision", "recall", "matched", "predicted", "reference"],
    "properties": {
        "f1": _UNIT,
        "precision": _UNIT,
        "recall": _UNIT,
        "matched": _COUNT,
        "predicted": _COUNT,
        "reference": _COUNT,
    },
    "additionalProperties": False,
}
_BLEU = {
    "type": "object",
    "required": ["bleu", "chrf", "samples"],
    "properties": {
        "bleu": {"type": "number", "minimum": 0, "maximum": 100},
        "chrf": {"type": "number", "minimum": 0, "maximum": 100},
        "samples": _COUNT,
    },
}

EVAL_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "minmo eval.json",
    "type": "object",
    "required": ["version", "checkpoint", "stage", "modules", "shards", "samples", "tasks"],
    "properties": {
        "version": {"const": EVAL_VERSION},
        "checkpoint": {
            "type": "string",
            "description": "the evaluated export (`final/`) or DCP step directory",
        },
        "stage": {"type": "string", "description": "the stage that wrote the export"},
        "step": {
            "type": ["integer", "null"],
            "minimum": 0,
            "description": "the training step of the checkpoint: an export's (its stage's "
            "last), a step directory's own; null for exports that do not record it",
        },
        "fingerprint": {
            "type": "string",
            "description": "sha256 of what the figures depend on (the export's files, the "
            "shards' index.json, the limits): a rerun with the same one keeps this file",
        },
        "modules": {"type": "array", "items": {"type": "string"}},
        "shards": {"type": "string", "description": "the evaluated stage directory"},
        "samples": _COUNT,
        "audio_s": {"type": "number", "minimum": 0},
        "wall_s": {"type": "number", "minimum": 0},
        "device": {"type": "string"},
        "ranks": {
            "type": "integer",
            "minimum": 1,
            "description": "processes that scored a share each (torchrun); the figures are "
            "their pooled counts, the same as one process's",
        },
        "tasks": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["samples"],
                "properties": {
                    "samples": _COUNT,
                    "wer": _RATE,
                    "cer": _RATE,
                    "by_language": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "properties": {"wer": _RATE, "cer": _RATE},
                        },
                    },
                    "hotword_recall": {
                        "type": "object",
                        "required": ["recall", "recalled", "hotwords"],
                        "properties": {"recall": _UNIT, "recalled": _COUNT, "hotwords": _COUNT},
                    },
                    "accuracy": _UNIT,
                    "confusion": {
                        "type": "object",
                        "required": ["labels", "counts"],
                        "properties": {
                            "labels": {"type": "array", "items": {"type": "string"}},
                            "counts": {
                                "type": "array",
                                "items": {"type": "array", "items": _COUNT},
                            },
                        },
                    },
                    "bleu": {"type": "number", "minimum": 0, "maximum": 100},
                    "chrf": {"type": "number", "minimum": 0, "maximum": 100},
                    "by_target_language": {"type": "object", "additionalProperties": _BLEU},
                    "loss_per_token": {"type": "number", "minimum": 0},
                    "top1_accuracy": _UNIT,
                    "perplexity": {"type": "number", "minimum": 1},
                    "tokens": _COUNT,
                    "frame_accuracy": _UNIT,
                    "frames": _COUNT,
                    "hop_s": {"type": "number", "exclusiveMinimum": 0},
                    "backchannels": _COUNT,
                    "backchannel_accuracy": {
                        "type": "object",
                        "description": "K (prediction steps) -> share of back-channels kept",
                        "additionalProperties": _UNIT,
                    },
                    "f1": {
                        "type": "object",
                        "description": "event type -> K (prediction steps) -> positive F1",
                        "additionalProperties": {
                            "type": "object",
                            "additionalProperties": _F1,
                        },
                    },
                    "examples": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["key", "reference", "hypothesis"],
                            "properties": {
                                "key": {"type": "string"},
                                "reference": {"type": "string"},
                                "hypothesis": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}


class EvalSchemaError(ValueError):
    """An eval.json does not match its schema; the message gives the path inside it."""


def validate_eval(doc: dict[str, Any]) -> dict[str, Any]:
    """Raise EvalSchemaError unless `doc` keeps EVAL_JSON_SCHEMA; return it unchanged."""
    return validate_document(
        doc, EVAL_JSON_SCHEMA, EVAL_VERSION, "eval.json", "rerun `minmo eval`", EvalSchemaError
    )
