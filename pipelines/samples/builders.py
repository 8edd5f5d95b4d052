"""Per-stage sample builders: build tables -> specs (pipelines/samples/spec.py), streamed.

Owns which tasks each stage gets from which rows (DESIGN.md §1 taxonomy):

  stage1  asr, contextual_asr, language_id (segments with a transcript / language),
          speech_translation (inline `translations`, side-input JSONL), emotion (the `emotion`
          column, synthesized lines' styles), audio_event (the `audio_events` column, side-input
          JSONL), speaker_analysis (a segment's gender / age; diarized conversations' turns),
          s2t_chat (s2s_samples: user audio -> assistant text)
  stage2  tts (transcribed segments), instruct_tts (synthesized lines with a style)
  stage3  s2s_chat, s2s_style_chat (s2s_samples: user audio -> assistant text + speech)
  stage4  duplex (frame_labels: conversation audio + per-frame labels)

A task is only built where the data carries its label; what was not built, and why, is counted
in `BuildCounts.skipped` so that nothing disappears without a trace. Must not read audio.

Labels: `SampleConfig.label_source` says per stage-1 task whether it reads the corpus' (human)
labels, the `annotations` table's (model) ones, or the human one where present else the model's
(`pick_label`); a human label is never replaced by a model one under human_then_model. Every
labelled sample's meta says which it used (`label_source`, and `label_model` /
`label_model_version` for a model label).

Quality filters (`SampleConfig.filters`, pipelines/samples/filters.py) decide per segment (and
per recording for whole-recording samples); a filtered sample is not built and is counted in
`BuildCounts.filtered` / `filtered_s` as "<task>: <reason>" -> samples / seconds.

Split keys: every spec's meta names its `recording_id` (or a `source_key`) and, where a speaker
label exists, `speaker` as `<corpus>:<speaker>`, which the held-out splits group by.

Stage-1 tasks are a registry, `STAGE1_TASKS` (name -> `Stage1Task`, at the bottom): a new task
is one function `(builder, segment) -> specs` (or `(builder) -> specs` over other tables), in
its own module if it likes, and one line there; its name joins the contract in schemas/tasks.py,
which the shards mixture and the capacity plan check against.
"""

from __future__ import annotations

import functools
import hashlib
import json
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from minmo.tokens.text import user_with_audio
from pipelines.build import BuildDir
from pipelines.samples import sources
from pipelines.samples.filters import (
    NOISE_IS_THE_LABEL,
    QualityFilters,
    for_task,
    recording_reason,
    segment_reason,
)
from pipelines.samples.prompts import PromptBook, language_name
from pipelines.samples.spec import audio_ref, make_spec, span_s
from schemas.labels import AGE_DECADES, LABEL_NAMES, LabelSource
from schemas.tasks import STAGE_TASKS, STAGES

# STAGES and STAGE_TASKS live in schemas/tasks.py; importable from here too for the shards step.
__all__ = [
    "STAGE1_TASKS",
    "STAGES",
    "STAGE_TASKS",
    "BuildCounts",
    "SampleConfig",
    "Segment",
    "Stage1Inputs",
    "Stage1Task",
    "StageBuilder",
]


@dataclass
class SampleConfig:
    """Which rows make samples. Durations bound what one training example may hold."""

    min_input_s: float = 0.3
    """Shortest audio a stage-1/3 sample feeds the encoder."""
    max_input_s: float = 60.0
    """Longest audio a stage-1/3 sample feeds the encoder."""
    max_target_s: float = 30.0
    """Longest target speech of a stage-2/3 sample."""
    max_conversation_s: float = 1200.0
    """Longest stage-4 conversation."""
    contextual_min_words: int = 4
    """Fewest transcript words a contextual-ASR sample needs (bias words are drawn from them)."""
    hotwords: int = 2
    """Bias words drawn from the transcript."""
    distractors: int = 3
    """Bias words drawn from other transcripts of the same language."""
    translations: list[str] = field(default_factory=list)
    """JSONL side inputs."""
    audio_events: str | None = None
    """JSONL side input."""
    prompts: str | None = None
    """Template file; default jobs/prompts/tasks.yaml."""
    seed: int = 0
    """Seed of the prompt and bias-word draws (in the shards step: the step's seed unless the
    `samples` section sets one)."""
    label_source: dict[str, str] = field(default_factory=dict)
    """Per stage-1 task, which labels it reads: human, model or human_then_model
    (schemas.labels.LabelSource; default human). The shards step's `label_source`."""
    filters: dict[str, Any] = field(default_factory=dict)
    """QualityFilters' fields (pipelines/samples/filters.py). The shards step's `filters`."""


@dataclass
class BuildCounts:
    """What one builder made, and what it did not make and why (nothing vanishes untraced)."""

    built: Counter = field(default_factory=Counter)  # task -> specs
    skipped: Counter = field(default_factory=Counter)  # "<task>: <why>" -> rows
    filtered: Counter = field(default_factory=Counter)
    """"<task>: <reason>" -> samples a quality filter removed (filters.REASONS)."""
    filtered_s: Counter = field(default_factory=Counter)
    """Same keys -> seconds of audio those samples held."""


def _hash_int(*parts: Any) -> int:
    return int.from_bytes(
        hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "little"
    )


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?¿¡\"'()") for w in text.split() if len(w.strip(".,;:!?¿¡\"'()")) >= 3]


# Distractor lexicon: wordfreq's frequency-ranked words of the language, past the most common
# (function words make poor hotwords), keeping the words `_words` would keep.
LEXICON_SKIP_TOP = 300
LEXICON_SIZE = 5000


@functools.lru_cache(maxsize=64)
def distractor_lexicon(language: str) -> tuple[str, ...]:
    """A fixed word list for `language` (ISO 639-1), empty when wordfreq does not know it."""
    from wordfreq import available_languages, top_n_list

    if not language or language not in available_languages():
        return ()
    words = top_n_list(language, LEXICON_SKIP_TOP + 3 * LEXICON_SIZE)[LEXICON_SKIP_TOP:]
    kept = [w for w in words if w.isalpha() and _words(w) == [w]]
    return tuple(kept[:LEXICON_SIZE])


Spec = dict[str, Any]
"""One sample spec (pipelines/samples/spec.py `make_spec`)."""


@dataclass
class Stage1Inputs:
    """What stage-1 tasks read besides the segment itself, loaded once per stage-1 run."""

    styles: dict[str, Any]
    """Synthesized audio's style by source URI (emotion, instruction)."""
    events: dict[str, list[str]]
    """Audio-event labels by normalised source URI (the `audio_events` side input)."""
    translations: dict[tuple[str, str], list[tuple[str, str]]]
    """(language, normalised transcript) -> [(target language, translation)]."""
    events_done: set[str] = field(default_factory=set)
    """Recordings that already have their one audio-event sample in this run."""


@dataclass(frozen=True)
class Segment:
    """One segment within the input bounds, as every per-segment stage-1 task sees it."""

    sid: str
    lang: str | None
    text: str
    """The stripped transcript; empty when the segment has none."""
    ref: dict[str, Any]
    """The segment's audio reference (`audio_ref`)."""
    meta: dict[str, Any]
    row: dict[str, Any]
    rec: sources.RecordingInfo
    inputs: Stage1Inputs
    model: sources.ModelLabels | None = None
    """The segment's pseudo-labels (`annotations`), where the builder reads them."""


class StageBuilder:
    """Reads the tables once per stage and yields specs; `counts` says what was built/skipped."""

    def __init__(
        self,
        build: BuildDir,
        config: SampleConfig,
        view: sources.TableView = None,
        recs: dict[str, sources.RecordingInfo] | None = None,
        book: PromptBook | None = None,
    ) -> None:
        """`view` restricts every table to one unit's part files (None: whole tables); `recs`
        supplies the recordings those rows refer to when they live in other units."""
        self.build = build
        self.config = config
        self.view = view
        self.book = book or PromptBook.load(config.prompts, config.seed)
        self.counts = BuildCounts()
        self._recs = recs
        self.filters = QualityFilters.from_config(config.filters)
        self.label_sources = {
            task: LabelSource(value) for task, value in config.label_source.items()
        }
        self._model_labels: dict[str, sources.ModelLabels] | None = None

    @property
    def model_labels(self) -> dict[str, sources.ModelLabels]:
        """segment_id -> pseudo-labels; read only when a task or a filter uses them."""
        if self._model_labels is None:
            wanted = self.filters.needs_model or any(
                s is not LabelSource.HUMAN for s in self.label_sources.values()
            )
            self._model_labels = sources.model_labels(self.build, self.view) if wanted else {}
        return self._model_labels

    def label_source(self, task: str) -> LabelSource:
        return self.label_sources.get(task, LabelSource.HUMAN)

    @property
    def recs(self) -> dict[str, sources.RecordingInfo]:
        if self._recs is None:
            self._recs = sources.recordings(self.build, self.view)
        return self._recs

    def specs(self, stage: str) -> Iterator[dict[str, Any]]:
        builders = {
            "stage1": self._stage1,
            "stage2": self._stage2,
            "stage3": self._stage3,
            "stage4": self._stage4,
        }
        if stage not in builders:
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        for spec in builders[stage]():
            self.counts.built[spec["task"]] += 1
            yield spec

    # ---- shared -------------------------------------------------------------------------------

    def _segments(self) -> Iterator[tuple[dict[str, Any], sources.RecordingInfo]]:
        """Segments of non-duplicate recordings, with their labels (null on a v1 build)."""
        cols = ["segment_id", "recording_id", "channel", "start_s", "end_s", "text", "language"]
        cols += ["speaker", *LABEL_NAMES]
        for seg in sources.iter_rows(self.build, "segments", cols, self.view):
            rec = self.recs.get(seg["recording_id"])
            if rec is None or rec.duplicate:
                continue
            yield seg, rec

    def _meta(
        self, rec: sources.RecordingInfo, speaker: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        """Provenance: the relocatable key, never the URI (shards must not depend on where
        sources live), and the speaker qualified by corpus (speaker ids are only unique within
        a corpus), the key the held-out splits group by."""
        meta = {"source_key": rec.source_key, "corpus": rec.corpus, **extra}
        if speaker := speaker or rec.speaker:
            meta["speaker"] = f"{rec.corpus}:{speaker}"
        return meta

    def skip(self, task: str, why: str) -> None:
        """Count a row that made no `task` sample, and why (BuildCounts.skipped)."""
        self.counts.skipped[f"{task}: {why}"] += 1

    def pick_label(self, seg: Segment, task: str, human: Any, model_field: str | None) -> Any:
        """(label, provenance) that `task` reads for `seg` under its label_source, or None.

        human: the corpus' label (None / empty: none); model_field: the ModelLabels attribute
        of the same label (None: the model gives none). A human label always wins under
        human_then_model. A model-reading task that finds no label counts a skip; a missing
        human label under `human` is the normal case and is not counted."""
        source = self.label_source(task)
        if source is not LabelSource.MODEL and human:
            return human, {"label_source": LabelSource.HUMAN.value}
        if source is LabelSource.HUMAN:
            return None
        model = seg.model
        value = getattr(model, model_field) if model is not None and model_field else None
        if not value:
            self.skip(task, f"no {source.value} label")
            return None
        provenance = {
            "label_source": LabelSource.MODEL.value,
            "label_model": model.model,
            "label_model_version": model.model_version,
        }
        confidence = model.confidence.get(model_field)
        if confidence is not None:
            provenance["label_confidence"] = round(confidence, 4)
        return (list(value) if isinstance(value, tuple) else value), provenance

    def _segment_reason(
        self, seg: dict[str, Any], rec: sources.RecordingInfo, task: str = ""
    ) -> str | None:
        """Which quality filter removes this segment's `task` samples, if any (filters.py)."""
        if not self.filters.active:
            return None
        return segment_reason(
            for_task(self.filters, task),
            rec,
            duration_s=seg["end_s"] - seg["start_s"],
            text=(seg.get("text") or "").strip() or None,
            language=seg.get("language"),
            model=self.model_labels.get(seg["segment_id"]),
        )

    def filtered(self, spec: Spec, segment_why: str | None = None) -> bool:
        """Whether a quality filter removes `spec`; counts it (and its seconds) when so.

        A spec over one segment (meta.segment_id) takes its segment's decision; a spec over a
        whole recording (meta.recording_id only) its recording's measures."""
        if not self.filters.active:
            return False
        meta = spec["meta"]
        if "segment_id" in meta:
            why = segment_why
        else:
            rec = self.recs.get(meta.get("recording_id", ""))
            filters = for_task(self.filters, spec["task"])
            why = None if rec is None else recording_reason(filters, rec)
        if why is None:
            return False
        key = f"{spec['task']}: {why}"
        self.counts.filtered[key] += 1
        self.counts.filtered_s[key] += span_s(spec["input_audio"] or spec["target_speech"])
        return True

    # ---- stage 1 ------------------------------------------------------------------------------

    def _stage1(self) -> Iterator[dict[str, Any]]:
        """Every registered stage-1 task (`STAGE1_TASKS`): the per-segment ones segment by
        segment, in registry order within a segment, then the ones over the whole build."""
        cfg = self.config
        inputs = Stage1Inputs(
            styles=sources.styles_by_audio(self.build, self.view),
            events=sources.audio_events(cfg.audio_events),
            translations=sources.translations(tuple(cfg.translations)),
        )
        tasks = list(STAGE1_TASKS.values())
        per_segment = [t.per_segment for t in tasks if t.per_segment is not None]
        for seg, rec in self._segments():
            span = seg["end_s"] - seg["start_s"]
            if not cfg.min_input_s <= span <= cfg.max_input_s:
                self.skip("stage1", "segment outside min/max input duration")
                continue
            why = self._segment_reason(seg, rec)
            segment = Segment(
                sid=seg["segment_id"],
                lang=seg.get("language"),
                text=(seg.get("text") or "").strip(),
                ref=audio_ref(
                    rec.source_uri, rec.channels, seg["channel"], seg["start_s"], seg["end_s"]
                ),
                meta=self._meta(
                    rec,
                    speaker=seg.get("speaker"),
                    recording_id=seg["recording_id"],
                    segment_id=seg["segment_id"],
                ),
                row=seg,
                rec=rec,
                inputs=inputs,
                model=self.model_labels.get(seg["segment_id"]),
            )
            for build_task in per_segment:
                for spec in build_task(self, segment):
                    task_why = why
                    if why is not None and spec["task"] in NOISE_IS_THE_LABEL:
                        task_why = self._segment_reason(seg, rec, spec["task"])
                    if not self.filtered(spec, task_why):
                        yield spec
        for task in tasks:
            if task.over_build is not None:
                for spec in task.over_build(self):
                    if not self.filtered(spec):
                        yield spec

    def segment_spec(
        self,
        seg: Segment,
        task: str,
        prompt: str,
        answer: str,
        provenance: dict[str, Any] | None = None,
        language: str | None = None,
        **extra: Any,
    ) -> Spec:
        """A stage-1 sample over one segment's audio; `extra` fields join its meta and its key,
        `provenance` (where the label came from) its meta only: the same question about the
        same audio keeps its key whichever source answered it. `language` defaults to the
        segment's."""
        return make_spec(
            stage="stage1",
            task=task,
            source_id=seg.sid + "".join(f":{v}" for v in extra.values()),
            language=language or seg.lang,
            messages=[
                {"role": "user", "content": user_with_audio(prompt)},
                {"role": "assistant", "content": answer},
            ],
            meta={**seg.meta, **(provenance or {}), **extra},
            input_audio=seg.ref,
        )

    def _language_of(self, seg: Segment) -> str | None:
        """The segment's human language, else the model's (to name a model transcript's)."""
        return seg.lang or (seg.model.language if seg.model else None)

    def _asr(self, seg: Segment) -> Iterator[Spec]:
        picked = self.pick_label(seg, "asr", seg.text, "transcript")
        if picked:
            text, provenance = picked
            prompt = self.book.choose("asr", seg.sid)
            yield self.segment_spec(
                seg, "asr", prompt, text, provenance, language=self._language_of(seg)
            )

    def _contextual_asr(self, seg: Segment) -> Iterator[Spec]:
        picked = self.pick_label(seg, "contextual_asr", seg.text, "transcript")
        if not picked:
            return
        text, provenance = picked
        lang = self._language_of(seg)
        bias = self._bias_words(seg.sid, text, lang)
        if bias:
            prompt = self.book.choose("contextual_asr", seg.sid, hotwords=", ".join(bias))
            yield self.segment_spec(
                seg, "contextual_asr", prompt, text, provenance, language=lang, hotwords=bias
            )
        elif not distractor_lexicon(lang or ""):
            self.skip("contextual_asr", f"no distractor lexicon for language {lang!r}")
        else:
            self.skip("contextual_asr", "transcript too short for bias words")

    def _speech_translation(self, seg: Segment) -> Iterator[Spec]:
        """Inline targets (the segment's `translations`) first, then side-input ones whose
        (language, transcript) match; one sample per target language."""
        if self.label_source("speech_translation") is LabelSource.MODEL:
            self.skip("speech_translation", "no model label")  # annotate gives no translations
            return
        targets: dict[str, str] = {}
        for entry in seg.row.get("translations") or []:
            targets.setdefault(entry["language"], entry["text"])
        if seg.text:
            key = (seg.lang or "", sources.normalise_text(seg.text))
            for target, translated in seg.inputs.translations.get(key, []):
                targets.setdefault(target, translated)
        for target, translated in targets.items():
            prompt = self.book.choose(
                "speech_translation", seg.sid, target_language=language_name(target)
            )
            yield self.segment_spec(
                seg,
                "speech_translation",
                prompt,
                translated,
                {"label_source": LabelSource.HUMAN.value},
                target_language=target,
            )

    def _language_id(self, seg: Segment) -> Iterator[Spec]:
        picked = self.pick_label(seg, "language_id", seg.lang, "language")
        if picked:
            lang, provenance = picked
            prompt = self.book.choose("language_id", seg.sid)
            yield self.segment_spec(
                seg, "language_id", prompt, language_name(lang), provenance, language=lang
            )

    def _emotion(self, seg: Segment) -> Iterator[Spec]:
        """The segment's `emotion` label, else the style its synthesized line was spoken in
        (the synthesis instruction is the build's own label: `human`, not a model's guess)."""
        style = seg.inputs.styles.get(seg.rec.source_uri)
        human = seg.row.get("emotion") or (style.emotion if style else None)
        picked = self.pick_label(seg, "emotion", human, "emotion")
        if picked:
            emotion, provenance = picked
            prompt = self.book.choose("emotion", seg.sid)
            yield self.segment_spec(seg, "emotion", prompt, emotion, provenance)

    def _audio_event(self, seg: Segment) -> Iterator[Spec]:
        """The segment's `audio_events` label over the segment; and once per recording named
        in the audio-events side input, over its whole audio."""
        picked = self.pick_label(seg, "audio_event", seg.row.get("audio_events"), "audio_events")
        if picked:
            events, provenance = picked
            prompt = self.book.choose("audio_event", seg.sid)
            yield self.segment_spec(seg, "audio_event", prompt, ", ".join(events), provenance)
        rec, side = seg.rec, seg.inputs.events
        uri = sources.normalise_uri(rec.source_uri)
        if uri not in side or uri in seg.inputs.events_done:
            return
        seg.inputs.events_done.add(uri)
        yield make_spec(
            stage="stage1",
            task="audio_event",
            source_id=seg.row["recording_id"],
            language=seg.lang,
            messages=[
                {
                    "role": "user",
                    "content": user_with_audio(self.book.choose("audio_event", seg.sid)),
                },
                {"role": "assistant", "content": ", ".join(side[uri])},
            ],
            meta=self._meta(
                rec, recording_id=seg.row["recording_id"], label_source=LabelSource.HUMAN.value
            ),
            input_audio=audio_ref(rec.source_uri, rec.channels, None, 0.0, rec.duration_s),
        )

    def _speaker_traits(self, seg: Segment) -> Iterator[Spec]:
        """speaker_analysis per labelled segment: a gender and an age question (meta.question);
        a segment without its own label takes its recording's (a whole-file label covers every
        segment, as in schemas/segments.py)."""
        if self.label_source("speaker_analysis") is LabelSource.MODEL:
            self.skip("speaker_analysis", "no model label")  # annotate gives no gender or age
            return
        gender = seg.row.get("gender") or seg.rec.gender
        age = seg.row.get("age")
        age = seg.rec.age if age is None else age
        human = {"label_source": LabelSource.HUMAN.value}
        if gender:
            prompt = self.book.choose("speaker_analysis.gender", seg.sid)
            yield self.segment_spec(
                seg, "speaker_analysis", prompt, gender, human, question="gender"
            )
        if age is not None:
            prompt = self.book.choose("speaker_analysis.age", seg.sid)
            yield self.segment_spec(
                seg, "speaker_analysis", prompt, age_answer(int(age)), human, question="age"
            )

    def _bias_words(self, sid: str, text: str, lang: str | None) -> list[str]:
        """Hotwords from the transcript plus distractors from a fixed lexicon of the language.

        The lexicon depends on nothing in the build, so a sample's prompt, content and key do
        not change when other data is added. Every draw comes from one seeded sha512 of the
        segment id: its bytes pick the distractors' lexicon indices, and CRC-32 keyed by it
        orders the transcript's words. O(words + distractors) per segment and a single
        cryptographic hash, not a pass over a corpus-wide pool."""
        if len(text.split()) < self.config.contextual_min_words:
            return []
        words = sorted(set(_words(text)))
        lexicon = distractor_lexicon(lang or "")
        if not words or len(lexicon) < 2 * self.config.distractors:
            return []
        digest = hashlib.sha512(f"{self.config.seed}\0{sid}\0bias".encode()).digest()
        key = int.from_bytes(digest[:4], "little")
        hot = sorted(words, key=lambda w: zlib.crc32(w.encode(), key))[: self.config.hotwords]
        lower = {w.lower() for w in words}
        others: list[str] = []
        for i in range(4, len(digest) - 3, 4):  # 15 draws; 3 distractors rarely need 4
            if len(others) == self.config.distractors:
                break
            w = lexicon[int.from_bytes(digest[i : i + 4], "little") % len(lexicon)]
            if w.lower() not in lower and w not in others:
                others.append(w)
        order = key ^ 0x9E3779B9
        return sorted(hot + others, key=lambda w: zlib.crc32(w.encode(), order))

    def _speaker_analysis(self) -> Iterator[dict[str, Any]]:
        by_rec: dict[str, list[dict[str, Any]]] = {}
        for t in sources.iter_rows(
            self.build,
            "turns",
            ["recording_id", "speaker", "start_s", "end_s", "backend"],
            self.view,
        ):
            by_rec.setdefault(t["recording_id"], []).append(t)
        for rid in sorted(by_rec):
            rec = self.recs.get(rid)
            if rec is None:
                self.skip("speaker_analysis", "turns of an unknown recording")
                continue
            if rec.duration_s > self.config.max_input_s:
                self.skip("speaker_analysis", "conversation longer than max_input_s")
                continue
            turns = sorted(by_rec[rid], key=lambda t: (t["start_s"], t["speaker"]))
            order: list[str] = []
            for t in turns:
                if t["speaker"] not in order:
                    order.append(t["speaker"])
            names = {s: f"speaker {i + 1}" for i, s in enumerate(order)}
            talk = Counter()
            for t in turns:
                talk[names[t["speaker"]]] += t["end_s"] - t["start_s"]
            most = max(talk, key=lambda n: (talk[n], n))
            answer = (
                f"{len(order)} speakers take {len(turns)} turns in {rec.duration_s:.0f} seconds; "
                f"{names[order[0]]} speaks first and {most} talks the most "
                f"({talk[most]:.0f} s)."
            )
            yield make_spec(
                stage="stage1",
                task="speaker_analysis",
                source_id=rid,
                language=None,
                messages=[
                    {
                        "role": "user",
                        "content": user_with_audio(self.book.choose("speaker_analysis", rid)),
                    },
                    {"role": "assistant", "content": answer},
                ],
                meta=self._meta(
                    rec,
                    recording_id=rid,
                    question="speakers",
                    speakers=len(order),
                    turns=len(turns),
                    # the turns are a diarization backend's output, not a person's labels
                    label_source=LabelSource.MODEL.value,
                    label_model=",".join(sorted({t.get("backend") or "unknown" for t in turns})),
                ),
                input_audio=audio_ref(rec.source_uri, rec.channels, None, 0.0, rec.duration_s),
            )

    def _s2s_rows(self) -> Iterator[dict[str, Any]]:
        yield from sources.iter_rows(self.build, "s2s_samples", None, self.view)

    def _user_ref(self, row: dict[str, Any], channels: dict[str, int]):
        n = channels.get(row["user_audio_uri"], 1)
        return audio_ref(
            row["user_audio_uri"],
            n,
            0 if n == 1 else None,
            row["user_start_s"],
            row["user_end_s"],
        )

    def _history(self, row: dict[str, Any]) -> list[dict[str, str]]:
        return [
            {"role": m["role"], "content": m["content"]}
            for m in json.loads(row.get("history_json") or "[]")
        ]

    def _user_span_ok(self, row: dict[str, Any], task: str) -> bool:
        """Whether an s2s row's user audio fits the input bounds; counts the skip when not."""
        span = row["user_end_s"] - row["user_start_s"]
        if self.config.min_input_s <= span <= self.config.max_input_s:
            return True
        self.skip(task, "user audio outside min/max input duration")
        return False

    def _s2s_provenance(self, row: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
        """An s2s row's ids and its user audio's relocatable key (never an absolute path: a
        synthesized line is named by its build key, a real query by its recording's key;
        rows from before s2s_samples v2 look it up among this unit's recordings)."""
        return {
            "sample_id": row["sample_id"],
            "dialogue_id": row["dialogue_id"],
            "recipe": row["recipe"],
            "source_key": row.get("user_audio_key")
            or keys.get(row["user_audio_uri"], row["user_audio_uri"]),
        }

    def _s2t_chat(self) -> Iterator[dict[str, Any]]:
        channels = sources.channels_by_uri(self.recs)
        keys = sources.keys_by_uri(self.recs)
        for row in self._s2s_rows():
            if not self._user_span_ok(row, "s2t_chat"):
                continue
            yield make_spec(
                stage="stage1",
                task="s2t_chat",
                source_id=row["sample_id"],
                language=row.get("language"),
                messages=[
                    *self._history(row),
                    {
                        "role": "user",
                        "content": user_with_audio(self.book.choose("s2t_chat", row["sample_id"])),
                    },
                    {"role": "assistant", "content": row["assistant_text"]},
                ],
                meta=self._s2s_provenance(row, keys),
                input_audio=self._user_ref(row, channels),
            )

    # ---- stage 2 ------------------------------------------------------------------------------

    def _stage2(self) -> Iterator[dict[str, Any]]:
        styles = sources.styles_by_audio(self.build, self.view)
        for seg, rec in self._segments():
            text = (seg.get("text") or "").strip()
            if not text:
                continue
            span = seg["end_s"] - seg["start_s"]
            if not self.config.min_input_s <= span <= self.config.max_target_s:
                self.skip("tts", "segment outside min input / max target duration")
                continue
            sid, lang = seg["segment_id"], seg.get("language")
            why = self._segment_reason(seg, rec)
            target = audio_ref(
                rec.source_uri, rec.channels, seg["channel"], seg["start_s"], seg["end_s"]
            )
            meta = self._meta(
                rec,
                speaker=seg.get("speaker"),
                recording_id=seg["recording_id"],
                segment_id=sid,
                label_source=LabelSource.HUMAN.value,
            )
            tts = make_spec(
                stage="stage2",
                task="tts",
                source_id=sid,
                language=lang,
                messages=[
                    {"role": "user", "content": self.book.choose("tts", sid, text=text)},
                    {"role": "assistant", "content": text},
                ],
                meta=meta,
                target_speech=target,
            )
            if not self.filtered(tts, why):
                yield tts
            style = styles.get(rec.source_uri)
            if style:
                instruction = style.instruction or f"in a {style.emotion} voice"
                prompt = self.book.choose("instruct_tts", sid, text=text, instruction=instruction)
                instruct = make_spec(
                    stage="stage2",
                    task="instruct_tts",
                    source_id=sid,
                    language=lang,
                    messages=[
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": text},
                    ],
                    meta={**meta, "instruction": instruction, "emotion": style.emotion},
                    target_speech=target,
                )
                if not self.filtered(instruct, why):
                    yield instruct

    # ---- stage 3 ------------------------------------------------------------------------------

    def _stage3(self) -> Iterator[dict[str, Any]]:
        channels = sources.channels_by_uri(self.recs)
        keys = sources.keys_by_uri(self.recs)
        for row in self._s2s_rows():
            if not self._user_span_ok(row, "s2s_chat"):
                continue
            if row["assistant_duration_s"] > self.config.max_target_s:
                self.skip("s2s_chat", "assistant audio longer than max_target_s")
                continue
            instruction = row.get("style_instruction")
            task = "s2s_style_chat" if instruction else "s2s_chat"
            prompt = self.book.choose(task, row["sample_id"], instruction=instruction or "")
            yield make_spec(
                stage="stage3",
                task=task,
                source_id=row["sample_id"],
                language=row.get("language"),
                messages=[
                    *self._history(row),
                    {"role": "user", "content": user_with_audio(prompt)},
                    {"role": "assistant", "content": row["assistant_text"]},
                ],
                meta={
                    **self._s2s_provenance(row, keys),
                    "assistant_audio_key": keys.get(
                        row["assistant_audio_uri"], row["assistant_audio_uri"]
                    ),
                    "user_voice": row.get("user_voice"),
                    "assistant_voice": row["assistant_voice"],
                    "instruction": instruction,
                },
                input_audio=self._user_ref(row, channels),
                target_speech=audio_ref(
                    row["assistant_audio_uri"],
                    channels.get(row["assistant_audio_uri"], 1),
                    0,
                    0.0,
                    row["assistant_duration_s"],
                ),
            )

    # ---- stage 4 ------------------------------------------------------------------------------

    def _stage4(self) -> Iterator[dict[str, Any]]:
        """One duplex sample per frame_labels row: the user's stream as input (schemas/duplex.py
        says what that is), the frame labels as target, the assistant activity as a member;
        the user's back-channel times ride in the meta (`backchannel_s`) for `minmo eval`."""
        backchannels = sources.backchannel_times(self.build, self.view)
        for row in sources.iter_rows(self.build, "frame_labels", None, self.view):
            rec = self.recs.get(row["recording_id"])
            if rec is None:
                self.skip("duplex", "frame labels of an unknown recording")
                continue
            if rec.duration_s > self.config.max_conversation_s:
                self.skip("duplex", "conversation longer than max_conversation_s")
                continue
            activity = row.get("assistant_activity")
            if activity is None:
                # A frame_labels v1 build: without the track both role samples of a mono call
                # would contradict each other, so none is built until label-turns reruns.
                self.skip("duplex", "no assistant_activity (frame_labels v1): rerun label-turns")
                continue
            if len(activity) != len(row["labels"]):
                self.skip("duplex", "assistant_activity and labels differ in length")
                continue
            user_channel = int(row["user_channel"])
            if rec.channels > 1 and not 0 <= user_channel < rec.channels:
                self.skip("duplex", "user channel outside the recording's channels")
                continue
            sid = row["sample_id"]
            yield make_spec(
                stage="stage4",
                task="duplex",
                source_id=sid,
                language=None,
                messages=[
                    {"role": "system", "content": self.book.choose("duplex", sid)},
                    {"role": "user", "content": user_with_audio("")},
                ],
                meta=self._meta(
                    rec,
                    recording_id=row["recording_id"],
                    sample_id=sid,
                    user_speaker=row["user_speaker"],
                    assistant_speaker=row["assistant_speaker"],
                    user_channel=user_channel,
                    label_hop_s=float(row["hop_s"]),
                    backchannel_s=backchannels.get(sid, []),
                ),
                # The user's channel of a multi-channel call; the whole file of a mono one.
                input_audio=audio_ref(
                    rec.source_uri,
                    rec.channels,
                    user_channel if rec.channels > 1 else None,
                    0.0,
                    rec.duration_s,
                ),
                labels=[int(v) for v in row["labels"]],
                assistant_activity=[int(v) for v in activity],
            )


# Age -> the decade word of schemas.labels.AGE_DECADES ("thirties" for 30..39).
_DECADE_WORDS = {middle // 10: word for word, middle in AGE_DECADES.items()}


def age_answer(age: int) -> str:
    """Years -> the answer to an age question: the number and the decade, the way people say
    it ("about 34 years old, in their thirties"); children and the very old get no decade."""
    if age < 13:
        return f"a child, about {age} years old"
    if age >= 100:
        return f"about {age} years old"
    return f"about {age} years old, in their {_DECADE_WORDS[age // 10]}"


@dataclass(frozen=True)
class Stage1Task:
    """How one stage-1 task is built: `per_segment(builder, segment)` runs for every segment
    within the input bounds, `over_build(builder)` once after the segments (tasks that read
    other tables). Either yields specs and counts its own skips (`builder.skip`)."""

    per_segment: Callable[[StageBuilder, Segment], Iterator[Spec]] | None = None
    over_build: Callable[[StageBuilder], Iterator[Spec]] | None = None


STAGE1_TASKS: dict[str, Stage1Task] = {
    "asr": Stage1Task(per_segment=StageBuilder._asr),
    "contextual_asr": Stage1Task(per_segment=StageBuilder._contextual_asr),
    "speech_translation": Stage1Task(per_segment=StageBuilder._speech_translation),
    "language_id": Stage1Task(per_segment=StageBuilder._language_id),
    "emotion": Stage1Task(per_segment=StageBuilder._emotion),
    "audio_event": Stage1Task(per_segment=StageBuilder._audio_event),
    "speaker_analysis": Stage1Task(
        per_segment=StageBuilder._speaker_traits, over_build=StageBuilder._speaker_analysis
    ),
    "s2t_chat": Stage1Task(over_build=StageBuilder._s2t_chat),
}
"""Every stage-1 task by name (a name of schemas.tasks.STAGE_TASKS["stage1"]), in the order its
samples are built: adding a task is its function (its own module is fine) and one line here.
The order is part of the output (it orders specs within a unit), so new tasks go at the end of
their kind."""
