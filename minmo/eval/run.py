"""`minmo eval CHECKPOINT --shards DIR`: a stage's export, or a DCP step checkpoint of a
training run, scored on a shard directory.

Reads DIR with the trainer's own reader (`minmo.train.data`: ShardIndex, the epoch-0 order of
seed 0 that a single-process StageLoader reads, Batcher) and scores each task present, by the
kind of answer it has:

    decoded text   asr, contextual_asr (WER / CER, hotword recall), language_id, emotion,
                   audio_event, speaker_analysis (accuracy, confusion), speech_translation
                   (BLEU, chrF): greedy decoding of the LLM (minmo.eval.model.greedy_decode)
    text loss      s2t_chat: teacher-forced cross-entropy per assistant token
    speech tokens  tts, instruct_tts, s2s_chat, s2s_style_chat: top-1 accuracy and perplexity of
                   the voice token LM under teacher forcing
    duplex         positive F1 at K = 1, 5, 10 of the turn-taking events the predictor's
                   per-frame argmax states, against the shard's labels
                   (minmo.duplex.evaluate.score_samples), frame accuracy, and back-channel
                   accuracy at the user back-channels the shard's meta lists (`backchannel_s`)

and writes eval.json (schemas/eval.py) through pyarrow.fs, so CHECKPOINT and `--out` may be
object-store URIs (an export on a store is copied once into minmo's local cache, as model
directories are: minmo.io.trees.local_dir). Resumable: eval.json records a fingerprint of what
it scored (the export's files, the shard directory's index.json, the decoding limits), and a
rerun that finds the same fingerprint at `out` keeps that file instead of scoring again.

In a job, `eval: {stages: [1b, 4]}` scores each stage's export of the build on its shard
stage's held-out split: `{build}/checkpoints/<stage>/final` on
`{build}/shards/<stage's shard stage>/<split>` -> `{build}/eval/<stage>/eval.json`
(`build_runs`), where `minmo stats` finds it (pipelines/stats/evals.py).

CHECKPOINT may also be a step directory `<out>/step-00000012/` (minmo.eval.model.load_step
says what rebuilds the model from it); eval.json's `step` is then that step, so evaluating a
run's step directories gives the figures' curve against the training step.

Distributed (`torchrun --nproc-per-node N -m minmo.cli eval ...`): the first `limit` samples
of the order above are cut into N contiguous shares, rank r scores share r, and the ranks'
raw counts (edit counts, confusion counts, F1 match counts, token and NLL sums: `TaskScore`)
are gathered and summed in rank order, so the figures are the single process's (float sums up
to rounding); rank 0 writes eval.json.

Refused before any model work: a DIR that is no stage directory of this checkout's index
version (the reader says which file), samples of an unknown stage or task, and a checkpoint
without the modules a present task needs.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
import torch.distributed as dist
from torch.nn import functional as F

from minmo.config import StorageOptions, storage_options_field
from minmo.duplex.evaluate import DEFAULT_KS, DuplexScore, score_samples
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
    StepCheckpoint,
    describe_step,
    greedy_decode,
    is_step_checkpoint,
    load_checkpoint,
    load_step,
    read_export,
    require_modules,
)
from minmo.eval.normalize import normalize_text, scores_characters
from minmo.io.atomic import write_text_atomic
from minmo.io.fs import open_filesystem, uri_scheme
from minmo.io.trees import FETCHED_MARKER, local_dir
from minmo.model.batch import IGNORE, collate
from minmo.model.minmo import SHARDS_OF_STAGE
from minmo.train.config import ModelSpec
from minmo.train.data import Batcher, Budget, ShardIndex
from minmo.train.distributed import DistInfo, barrier, init_distributed
from schemas.duplex import EventType
from schemas.eval import EVAL_VERSION, validate_eval
from schemas.shards import index_path
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

    checkpoint: str | None = None
    """A stage's export directory (`<out>/final/`, with export.json) or a DCP step directory
    of a training run (`<out>/step-00000012/`); a path or URI. Required unless a job's
    `stages` name the exports."""
    shards: str | None = None
    """A stage directory of shards (e.g. DIR/shards/stage1/test); a path or URI. Required
    unless a job's `stages` name the exports."""
    out: str | None = None
    """Where eval.json goes (a path or URI); default: eval.json beside the export (the training
    `out`), and `<out>/eval/step-00000012/eval.json` for a step directory."""
    redo: bool = False
    """Score again even when `out` already holds an eval.json of the same export, shards and
    limits (its fingerprint matches), which a rerun otherwise keeps."""
    batch_size: int = 8
    """Samples per batch."""
    max_new_tokens: int = 128
    """Longest decoded answer, in text tokens."""
    max_samples: int | None = None
    """Score only the first N samples of DIR (in its order); None: all."""
    device: str | None = None
    """torch device; None: cuda when present, else cpu."""
    model: ModelSpec = field(default_factory=ModelSpec)
    """The model, for an export whose export.json does not record it (older exports) and for a
    step directory of a run that has not exported yet (nothing else records it)."""
    seed: int = 0
    """The training seed, where `model` is used."""
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
    duplex: DuplexScore | None = None
    hops: set[float] = field(default_factory=set)
    examples: list[dict[str, str]] = field(default_factory=list)

    def merge(self, other: TaskScore) -> None:
        """Add `other`'s counts (a later share of the same task's samples) to these."""
        self.samples += other.samples
        for name, per_language in other.rates.items():
            for lang, counts in per_language.items():
                self.rates[name][lang] = self.rates[name].get(lang, EditCounts()) + counts
        self.hotwords = [a + b for a, b in zip(self.hotwords, other.hotwords, strict=True)]
        self.confusion.counts.update(other.confusion.counts)
        for lang, (refs, hyps) in other.translations.items():
            mine = self.translations.setdefault(lang, ([], []))
            mine[0].extend(refs)
            mine[1].extend(hyps)
        self.tokens += other.tokens
        self.nll += other.nll
        self.correct += other.correct
        if other.duplex is not None:
            self.add_duplex(other.duplex)
        self.hops |= other.hops
        self.examples = (self.examples + other.examples)[:EXAMPLES]

    def add_duplex(self, score: DuplexScore) -> None:
        if self.duplex is None:
            self.duplex = score
            return
        mine = self.duplex
        events = {key: mine.events[key] + score.events[key] for key in mine.events}
        backchannel = {
            k: (mine.backchannel[k][0] + c, mine.backchannel[k][1] + n)
            for k, (c, n) in score.backchannel.items()
        }
        self.duplex = DuplexScore(events, backchannel)

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
        assert self.duplex is not None  # a hop was seen, so a sample was scored
        f1 = duplex_f1_table(self.duplex, DEFAULT_KS)
        out: dict[str, Any] = {
            "f1": f1,
            "frame_accuracy": self.correct / self.tokens if self.tokens else 0.0,
            "frames": self.tokens,
            "hop_s": hop,
            "backchannels": self.duplex.backchannel[DEFAULT_KS[0]][1],
        }
        if out["backchannels"]:  # no reference back-channel: no accuracy to state
            out["backchannel_accuracy"] = {
                str(k): self.duplex.backchannel_accuracy(k) for k in DEFAULT_KS
            }
        return out


@dataclass
class EvalResult:
    doc: dict[str, Any]
    out: str
    kept: bool = False
    """True when `out` already held this fingerprint's figures and nothing was scored."""
    rank: int = 0
    """This process's rank under torchrun: every rank holds the merged figures, rank 0 wrote
    them and prints them."""

    def render(self) -> str:
        d = self.doc
        if self.rank:
            return f"eval rank {self.rank}: share scored; rank 0 wrote {self.out}"
        done = (
            "kept from the last run (same export, shards and limits)"
            if self.kept
            else f"scored in {d['wall_s']:.1f} s on {d['device']}"
        )
        lines = [
            f"eval {d['checkpoint']} (stage {d['stage']}) on {d['shards']}: {d['samples']} "
            f"samples {done} -> {self.out}"
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
            if "backchannel_accuracy" in r:
                cells = "  ".join(f"@{k} {v:.3f}" for k, v in r["backchannel_accuracy"].items())
                lines.append(f"    {'back-channel accuracy':<24} {cells}")
                lines[-1] += f"  ({r['backchannels']} back-channels)"
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
            # Scored per sample (events match within a sample only), so counts pool by summing.
            key = sample["key"]
            # Back-channels leave no trace in the labels: the shard's meta carries their times.
            said = (sample["json"].get("provenance") or {}).get("backchannel_s") or []
            backchannels = [(EventType.USER_BACKCHANNEL, float(t)) for t in said]
            score.add_duplex(
                score_samples(
                    {key: (duplex_events(pred, hop), pred)},
                    {key: (duplex_events(ref, hop) + backchannels, ref)},
                    hop,
                    DEFAULT_KS,
                )
            )


@dataclass
class Resolved:
    """The checkpoint to score, read before any model work."""

    local: Path
    """The export or step directory, local (an object store's copied into the cache)."""
    stage: str
    modules: list[str]
    step: int | None
    step_dir: StepCheckpoint | None
    """Set for a DCP step directory."""
    inputs: list[Path]
    """Every directory the model's weights come from (fingerprinted)."""


def _record_of(checkpoint: str, config: EvalConfig) -> Path | None:
    """The run's `final/` export beside step directory `checkpoint`, local, when it exists."""
    if uri_scheme(checkpoint) in (None, "file"):
        final = Path(open_filesystem(checkpoint)[1]).resolve().parent / "final"
        return final if (final / "export.json").is_file() else None
    final_uri = f"{posixpath.dirname(checkpoint)}/final"
    fs, path = open_filesystem(final_uri, **config.storage_options)
    if fs.get_file_info(f"{path}/export.json").type != pafs.FileType.File:
        return None
    return local_dir(final_uri, config.storage_options)


def resolve(checkpoint: str, config: EvalConfig) -> Resolved:
    """CHECKPOINT read: an export's export.json, or a step directory's DCP metadata and the
    run's export beside it (minmo.eval.model.describe_step)."""
    local = local_dir(checkpoint, config.storage_options)
    if is_step_checkpoint(local):
        record = _record_of(checkpoint, config)
        step = describe_step(local, record)
        inputs = [local] + ([record] if record else [])
        return Resolved(local, step.stage, step.modules, step.step, step, inputs)
    meta = read_export(local)
    step_no = meta.get("step")
    stage, modules = str(meta["stage"]), list(meta["modules"])
    return Resolved(local, stage, modules, None if step_no is None else int(step_no), None, [local])


def fingerprint(resolved: Resolved, shards: str, config: EvalConfig) -> str:
    """What an eval.json's figures depend on, hashed: every file the weights come from
    (content, so a re-export of the same weights keeps it), the shard directory's index.json
    (which holds each shard's sha256), the limits that change what is scored, and for a step
    directory without its run's export the model spec and seed it was rebuilt from."""
    digest = hashlib.sha256()
    for root in resolved.inputs:
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            if file.name == FETCHED_MARKER:  # the cache's own note, not part of the export
                continue
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    fs, stage_dir = open_filesystem(shards, **config.storage_options)
    with fs.open_input_stream(index_path(stage_dir.rstrip("/"))) as f:
        digest.update(hashlib.sha256(f.read()).digest())
    digest.update(json.dumps([config.max_samples, config.max_new_tokens]).encode())
    if resolved.step_dir is not None and resolved.step_dir.record is None:
        digest.update(repr((config.model, config.seed)).encode())
    return digest.hexdigest()


def _default_out(checkpoint: str, step_dir: bool) -> str:
    """eval.json beside the export: in the training `out` that holds `final/`; for a step
    directory, `<out>/eval/<step dir>/eval.json` (one per step, none inside the DCP files)."""
    if uri_scheme(checkpoint) in (None, "file"):
        path = Path(open_filesystem(checkpoint)[1]).resolve()
        return str(
            path.parent / "eval" / path.name / "eval.json"
            if step_dir
            else path.parent / "eval.json"
        )
    parent, name = posixpath.split(checkpoint.rstrip("/"))
    return f"{parent}/eval/{name}/eval.json" if step_dir else f"{parent}/eval.json"


def _read_kept(out: str, fp: str, config: EvalConfig) -> dict[str, Any] | None:
    """The eval.json at `out` when it holds figures of fingerprint `fp`, else None."""
    fs, path = open_filesystem(out, **config.storage_options)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        try:
            doc = json.loads(f.read().decode("utf-8"))
        except ValueError:
            return None  # a damaged file is scored again, not trusted
    return doc if isinstance(doc, dict) and doc.get("fingerprint") == fp else None


def share(limit: int, info: DistInfo) -> range:
    """This rank's contiguous share of positions [0, limit): every position in exactly one
    share, ranks in position order (so concatenating shares by rank is the single order)."""
    return range(info.rank * limit // info.world, (info.rank + 1) * limit // info.world)


def _merge(
    parts: list[tuple[dict[str, TaskScore], int, float]],
) -> tuple[dict[str, TaskScore], int, float]:
    """Every rank's (scores, samples, audio seconds), summed in rank order."""
    scores: dict[str, TaskScore] = {}
    seen, audio_s = 0, 0.0
    for part, n, seconds in parts:
        for task, score in part.items():
            if task in scores:
                scores[task].merge(score)
            else:
                scores[task] = score
        seen += n
        audio_s += seconds
    return scores, seen, audio_s


def build_runs(build: str, stages: list[str], split: str) -> list[tuple[str, str, str]]:
    """(export, shard directory, eval.json) for each training stage of `build`: the layout a
    job's `eval: {stages: [...]}` scores (see the module docstring)."""
    base = build.rstrip("/")
    runs = []
    for stage in stages:
        if stage not in SHARDS_OF_STAGE:
            raise ValueError(
                f"eval: stage {stage!r} unknown; expected one of {', '.join(SHARDS_OF_STAGE)}"
            )
        runs.append(
            (
                f"{base}/checkpoints/{stage}/final",
                f"{base}/shards/{SHARDS_OF_STAGE[stage]}/{split}",
                f"{base}/eval/{stage}/eval.json",
            )
        )
    return runs


def run_eval(config: EvalConfig, progress: bool = False) -> EvalResult:
    if config.checkpoint is None or config.shards is None:
        raise ValueError("eval: give CHECKPOINT (a stage's export) and --shards DIR")
    started = time.perf_counter()
    checkpoint, shards = config.checkpoint.rstrip("/"), config.shards
    # Refusals first, before the model is built: the checkpoint's metadata, the shards' index
    # (its version is checked by the reader), the first batch's stages, tasks and needs.
    resolved = resolve(checkpoint, config)
    out = config.out or _default_out(checkpoint, resolved.step_dir is not None)
    index = ShardIndex.load(shards, config.storage_options)
    fp = fingerprint(resolved, shards, config)  # the index is there: the reader read it
    kept = None if config.redo else _read_kept(out, fp, config)
    if kept is not None:
        return EvalResult(validate_eval(kept), out, kept=True)
    owned = not (dist.is_available() and dist.is_initialized())
    info = init_distributed()
    # The order a single-process StageLoader reads (seed 0, epoch 0), cut into rank shares.
    order = index.epoch_order(0, 0)
    limit = min(config.max_samples or order.total, order.total)
    positions = share(limit, info)
    batches = iter(
        Batcher(
            (index.read(*order.locate(p)) for p in positions),
            Budget(max_samples=config.batch_size),
        )
    )
    checked: set[str] = set()

    def check(samples: list[dict[str, Any]]) -> None:
        for sample in samples:
            task = check_sample(sample["json"], shards)
            if task not in checked:
                require_modules(
                    checkpoint,
                    resolved.stage,
                    resolved.modules,
                    _NEEDS[task_kind(task)],
                    task,
                    shards,
                )
                checked.add(task)

    first = next(batches, None)
    if first is not None:
        check(first[0])
    device = config.device or str(info.device)
    if resolved.step_dir is not None:
        ckpt = load_step(resolved.step_dir, config.model, config.seed, device)
    else:
        ckpt = load_checkpoint(resolved.local, config.model, config.seed, device)
    scores: dict[str, TaskScore] = {}
    seen = 0
    audio_s = 0.0
    with torch.no_grad():
        while first is not None:
            samples = first[0]
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
            if progress and info.is_main:
                print(f"eval: {seen}/{len(positions)} samples of rank 0's share", flush=True)
            first = next(batches, None)
    if info.world > 1:
        parts: list[Any] = [None] * info.world
        dist.all_gather_object(parts, (scores, seen, audio_s))
        scores, seen, audio_s = _merge(parts)
    doc = {
        "version": EVAL_VERSION,
        "checkpoint": checkpoint,
        "stage": ckpt.stage,
        "step": resolved.step,
        "modules": ckpt.modules,
        "shards": shards,
        "fingerprint": fp,
        "samples": seen,
        "audio_s": audio_s,
        "wall_s": time.perf_counter() - started,
        "device": str(ckpt.device),
        "ranks": info.world,
        "tasks": {task: score.result() for task, score in sorted(scores.items())},
    }
    validate_eval(doc)
    if info.is_main:
        fs, path = open_filesystem(out, **config.storage_options)
        write_text_atomic(fs, path, json.dumps(doc, indent=2, ensure_ascii=False))
    barrier(info)  # eval.json is written when any rank returns
    if owned and info.world > 1:
        dist.destroy_process_group()
    return EvalResult(doc, out, rank=info.rank)
