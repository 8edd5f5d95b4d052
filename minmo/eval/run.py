"""`minmo eval CHECKPOINT --shards DIR`: a stage's export scored on a shard directory.

Reads DIR with the trainer's own reader (`minmo.train.data.StageLoader`, one epoch, in order)
and scores each task present, by the kind of answer it has:

    decoded text   asr, contextual_asr (WER / CER, hotword recall), language_id, emotion,
                   audio_event, speaker_analysis (accuracy, confusion), speech_translation
                   (BLEU, chrF): greedy decoding of the LLM (minmo.eval.model.greedy_decode)
    text loss      s2t_chat: teacher-forced cross-entropy per assistant token
    speech tokens  tts, instruct_tts, s2s_chat, s2s_style_chat: top-1 accuracy and perplexity of
                   the voice token LM under teacher forcing
    duplex         positive F1 at K = 1, 5, 10 of the turn-taking events the predictor's
                   per-frame argmax states, against the shard's labels
                   (minmo.duplex.evaluate.score_samples), and frame accuracy

and writes eval.json (schemas/eval.py). Refused before any model work: a DIR that is no stage
directory of this checkout's index version (the reader says which file), samples of an unknown
stage or task, and an export without the modules a present task needs.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from torch.nn import functional as F

from minmo.config import StorageOptions, storage_options_field
from minmo.duplex.evaluate import DEFAULT_KS, score_samples
from minmo.eval.metrics import (
    Confusion,
    EditCounts,
    bleu_chrf,
    duplex_events,
    duplex_f1_table,
    error_counts,
    error_rate_name,
)
from minmo.eval.model import (
    DUPLEX_MODULES,
    SPEECH_MODULES,
    TEXT_MODULES,
    LoadedCheckpoint,
    greedy_decode,
    load_checkpoint,
    read_export,
    require_modules,
)
from minmo.eval.normalize import normalize_text, scores_characters
from minmo.io.atomic import write_text_atomic
from minmo.model.batch import IGNORE, collate
from minmo.train.config import ModelSpec
from minmo.train.data import StageLoader
from schemas.eval import EVAL_VERSION, validate_eval
from schemas.tasks import STAGE_TASKS

TRANSCRIPTION = ("asr", "contextual_asr")
CLASSIFICATION = ("language_id", "emotion", "audio_event", "speaker_analysis")
TRANSLATION = ("speech_translation",)
DECODED = TRANSCRIPTION + CLASSIFICATION + TRANSLATION
TEXT_LOSS = ("s2t_chat",)
SPEECH = ("tts", "instruct_tts", "s2s_chat", "s2s_style_chat")
DUPLEX = ("duplex",)
# The model's forward pass each kind is run under (minmo.model.minmo.LOSS_OF_STAGE).
_FORWARD_STAGE = {"text": "1c", "speech": "2b", "duplex": "4"}
EXAMPLES = 5


@dataclass
class EvalConfig:
    """What `minmo eval` scores and how."""

    checkpoint: str
    """A stage's export directory (`<out>/final/`, with export.json)."""
    shards: str
    """A stage directory of shards (e.g. DIR/shards/stage1/test); a path or URI."""
    out: str | None = None
    """Where eval.json goes; default: eval.json beside the export (the training `out`)."""
    batch_size: int = 8
    """Samples per batch."""
    max_new_tokens: int = 128
    """Longest decoded answer, in text tokens."""
    max_samples: int | None = None
    """Score only the first N samples of DIR (in its order); None: all."""
    device: str | None = None
    """torch device; None: cuda when present, else cpu."""
    model: ModelSpec = field(default_factory=ModelSpec)
    """The model, for an export whose export.json does not record it (older exports)."""
    seed: int = 0
    """The training seed, for an export whose export.json does not record it."""
    storage_options: StorageOptions = storage_options_field()

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or None, got {self.max_samples}")


def task_kind(task: str) -> str:
    if task in DECODED:
        return "decoded"
    if task in TEXT_LOSS:
        return "text"
    if task in SPEECH:
        return "speech"
    if task in DUPLEX:
        return "duplex"
    raise ValueError(f"task {task!r} has no eval metric")


_NEEDS = {
    "decoded": TEXT_MODULES,
    "text": TEXT_MODULES,
    "speech": SPEECH_MODULES,
    "duplex": DUPLEX_MODULES,
}


def check_sample(meta: dict[str, Any], shards: str) -> str:
    """The sample's task; ValueError naming DIR and the key for an unknown stage or task."""
    stage, task, key = meta.get("stage"), meta.get("task"), meta.get("key")
    if stage not in STAGE_TASKS:
        raise ValueError(
            f"{shards}: sample {key} is of stage {stage!r}, which this checkout does not know "
            f"({', '.join(STAGE_TASKS)}): shards from another version of minmo; rebuild them"
        )
    if task not in STAGE_TASKS[stage]:
        raise ValueError(
            f"{shards}: sample {key} has task {task!r}, not one of {stage}'s "
            f"({', '.join(STAGE_TASKS[stage])})"
        )
    return str(task)


def _answer(meta: dict[str, Any]) -> str:
    messages = meta.get("messages") or []
    return str(messages[-1]["content"]) if messages and messages[-1]["role"] == "assistant" else ""


def _contains(text: str, word: str, language: str | None) -> bool:
    text, word = normalize_text(text), normalize_text(word)
    if not word:
        return False
    if scores_characters(language):
        return word.replace(" ", "") in text.replace(" ", "")
    return f" {word} " in f" {text} "


@dataclass
class TaskScore:
    """Pooled counts of one task, turned into its eval.json entry by `result`."""

    task: str
    samples: int = 0
    rates: dict[str, dict[str, EditCounts]] = field(default_factory=lambda: defaultdict(dict))
    hotwords: list[int] = field(default_factory=lambda: [0, 0])  # recalled, in the reference
    confusion: Confusion = field(default_factory=Confusion)
    translations: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    tokens: int = 0
    nll: float = 0.0
    correct: int = 0
    duplex_pred: dict[str, Any] = field(default_factory=dict)
    duplex_ref: dict[str, Any] = field(default_factory=dict)
    hops: set[float] = field(default_factory=set)
    examples: list[dict[str, str]] = field(default_factory=list)

    def add_text(self, meta: dict[str, Any], hypothesis: str) -> None:
        reference, language = _answer(meta), meta.get("language")
        if len(self.examples) < EXAMPLES:
            self.examples.append(
                {"key": str(meta.get("key")), "reference": reference, "hypothesis": hypothesis}
            )
        if self.task in TRANSCRIPTION:
            name, lang = error_rate_name(language), str(language)
            counts = error_counts(reference, hypothesis, language)
            self.rates[name][lang] = self.rates[name].get(lang, EditCounts()) + counts
            for word in (meta.get("provenance") or {}).get("hotwords") or []:
                if _contains(reference, word, language):
                    self.hotwords[1] += 1
                    self.hotwords[0] += _contains(hypothesis, word, language)
        elif self.task in CLASSIFICATION:
            self.confusion.add(reference, hypothesis)
        else:
            target = str((meta.get("provenance") or {}).get("target_language") or "")
            refs, hyps = self.translations.setdefault(target, ([], []))
            refs.append(reference)
            hyps.append(hypothesis)

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"samples": self.samples}
        kind = task_kind(self.task)
        if self.task in TRANSCRIPTION:
            by_language: dict[str, dict[str, Any]] = defaultdict(dict)
            for name, per_language in sorted(self.rates.items()):
                total = EditCounts()
                for lang, counts in sorted(per_language.items()):
                    total += counts
                    by_language[lang][name] = counts.to_dict()
                out[name] = total.to_dict()
            out["by_language"] = dict(by_language)
            if self.task == "contextual_asr":
                recalled, present = self.hotwords
                out["hotword_recall"] = {
                    "recall": recalled / present if present else 0.0,
                    "recalled": recalled,
                    "hotwords": present,
                }
        elif self.task in CLASSIFICATION:
            out["accuracy"] = self.confusion.accuracy
            out["confusion"] = self.confusion.matrix()
        elif self.task in TRANSLATION:
            all_refs = [r for refs, _ in self.translations.values() for r in refs]
            all_hyps = [h for _, hyps in self.translations.values() for h in hyps]
            out.update(bleu_chrf(all_refs, all_hyps))
            out["by_target_language"] = {
                lang: {**bleu_chrf(refs, hyps, lang), "samples": len(refs)}
                for lang, (refs, hyps) in sorted(self.translations.items())
            }
        elif kind == "text":
            out["loss_per_token"] = self.nll / self.tokens if self.tokens else 0.0
            out["tokens"] = self.tokens
        elif kind == "speech":
            out["top1_accuracy"] = self.correct / self.tokens if self.tokens else 0.0
            out["perplexity"] = math.exp(self.nll / self.tokens) if self.tokens else 1.0
            out["tokens"] = self.tokens
        else:
            out.update(self._duplex())
        if self.examples:
            out["examples"] = self.examples
        return out

    def _duplex(self) -> dict[str, Any]:
        if len(self.hops) != 1:
            raise ValueError(f"duplex samples with label hops {sorted(self.hops)}: expected one")
        (hop,) = self.hops
        score = score_samples(self.duplex_pred, self.duplex_ref, hop, DEFAULT_KS)
        f1 = duplex_f1_table(score, DEFAULT_KS)
        return {
            "f1": f1,
            "frame_accuracy": self.correct / self.tokens if self.tokens else 0.0,
            "frames": self.tokens,
            "hop_s": hop,
        }


@dataclass
class EvalResult:
    doc: dict[str, Any]
    out: str

    def render(self) -> str:
        d = self.doc
        lines = [
            f"eval {d['checkpoint']} (stage {d['stage']}) on {d['shards']}: {d['samples']} "
            f"samples in {d['wall_s']:.1f} s on {d['device']} -> {self.out}"
        ]
        for task, r in sorted(d["tasks"].items()):
            parts = [f"{r['samples']} samples"]
            for name in ("wer", "cer"):
                if name in r:
                    parts.append(f"{name.upper()} {r[name]['rate']:.3f}")
            if "hotword_recall" in r:
                parts.append(f"hotword recall {r['hotword_recall']['recall']:.3f}")
            for name in ("accuracy", "top1_accuracy", "frame_accuracy"):
                if name in r:
                    parts.append(f"{name.replace('_', ' ')} {r[name]:.3f}")
            if "bleu" in r:
                parts.append(f"BLEU {r['bleu']:.1f} chrF {r['chrf']:.1f}")
            if "loss_per_token" in r:
                parts.append(f"loss/token {r['loss_per_token']:.3f}")
            if "perplexity" in r:
                parts.append(f"perplexity {r['perplexity']:.1f}")
            lines.append(f"  {task:<20} " + ", ".join(parts))
            for event, per_k in r.get("f1", {}).items():
                cells = "  ".join(f"F1@{k} {v['f1']:.3f}" for k, v in per_k.items())
                lines.append(f"    {event:<24} {cells}")
        return "\n".join(lines)


def _score_batch(
    ckpt: LoadedCheckpoint,
    kind: str,
    samples: list[dict[str, Any]],
    scores: dict[str, TaskScore],
    config: EvalConfig,
) -> None:
    model, tokenizer = ckpt.model, ckpt.tokenizer
    batch = collate(samples).to(ckpt.device)
    if kind == "decoded":
        for sample, ids in zip(
            samples, greedy_decode(model, batch, config.max_new_tokens), strict=True
        ):
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            scores[sample["json"]["task"]].add_text(sample["json"], text)
        return
    out = model(batch, stage=_FORWARD_STAGE[kind])
    if kind == "text":
        # s2t_chat is the one task of this kind, so the batch's pooled sum is the task's: the
        # loss is the mean over the batch's assistant tokens.
        (task,) = {s["json"]["task"] for s in samples}
        n = int(out["text_tokens"])
        scores[task].tokens += n
        scores[task].nll += float(out["text_loss"]) * n
        return
    for b, sample in enumerate(samples):
        score = scores[sample["json"]["task"]]
        if kind == "speech":
            logits, targets = out["speech_logits"][b], out["speech_targets"][b]
            keep = targets != IGNORE
            score.tokens += int(keep.sum())
            score.correct += int((logits.argmax(-1)[keep] == targets[keep]).sum())
            score.nll += float(
                F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")
            )
        if kind == "duplex":
            logits = out["duplex_logits"][b]
            labels = batch.labels[b, : logits.shape[0]] if batch.labels is not None else None
            if labels is None:
                raise ValueError(f"duplex sample {sample['key']} has no labels")
            frames = sample["json"]["n_labels"]
            valid = (labels != IGNORE).cpu().numpy()[:frames]
            pred = logits.argmax(-1).cpu().numpy()[:frames][valid]
            ref = labels.cpu().numpy()[:frames][valid]
            hop = float(sample["json"]["label_hop_s"])
            score.hops.add(hop)
            score.tokens += int(ref.size)
            score.correct += int((pred == ref).sum())
            score.duplex_pred[sample["key"]] = (duplex_events(pred, hop), pred)
            score.duplex_ref[sample["key"]] = (duplex_events(ref, hop), ref)


def run_eval(config: EvalConfig, progress: bool = False) -> EvalResult:
    started = time.perf_counter()
    # Refusals first, before the model is built: the export's metadata, the shards' index
    # (its version is checked by the reader), the first batch's stages, tasks and needs.
    meta = read_export(config.checkpoint)
    loader = StageLoader(
        config.shards,
        max_samples=config.batch_size,
        collate=False,
        storage_options=config.storage_options,
    )
    checked: set[str] = set()

    def check(samples: list[dict[str, Any]]) -> None:
        for sample in samples:
            task = check_sample(sample["json"], config.shards)
            if task not in checked:
                require_modules(
                    config.checkpoint,
                    str(meta["stage"]),
                    list(meta["modules"]),
                    _NEEDS[task_kind(task)],
                    task,
                    config.shards,
                )
                checked.add(task)

    limit = min(config.max_samples or loader.samples_per_epoch, loader.samples_per_epoch)
    first = loader.next_batch()
    assert isinstance(first, list)
    check(first)
    ckpt = load_checkpoint(config.checkpoint, config.model, config.seed, config.device)
    scores: dict[str, TaskScore] = {}
    seen = 0
    audio_s = 0.0
    samples: Any = first
    with torch.no_grad():
        while samples is not None and seen < limit:
            samples = samples[: limit - seen]
            check(samples)
            seen += len(samples)
            groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for sample in samples:
                task = sample["json"]["task"]
                scores.setdefault(task, TaskScore(task)).samples += 1
                audio_s += float(sample.get("audio_s") or 0.0)
                groups[task_kind(task)].append(sample)
            for kind, group in groups.items():
                _score_batch(ckpt, kind, group, scores, config)
            if progress:
                print(f"eval: {seen}/{limit} samples", flush=True)
            samples = loader.next_batch()
    loader.close()
    doc = {
        "version": EVAL_VERSION,
        "checkpoint": ckpt.path,
        "stage": ckpt.stage,
        "modules": ckpt.modules,
        "shards": config.shards,
        "samples": seen,
        "audio_s": audio_s,
        "wall_s": time.perf_counter() - started,
        "device": str(ckpt.device),
        "tasks": {task: score.result() for task, score in sorted(scores.items())},
    }
    validate_eval(doc)
    out = config.out or str(Path(config.checkpoint).resolve().parent / "eval.json")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(pafs.LocalFileSystem(), out, json.dumps(doc, indent=2, ensure_ascii=False))
    return EvalResult(doc, out)
