"""Metrics of `minmo eval`, each a count that pools over samples and ranks before it is divided.

* Error rate (WER / CER): Levenshtein alignment of hypothesis units against reference units with
  substitution, insertion and deletion counts; corpus-level rate = total edits / total reference
  units (not a mean of per-sample rates). Units come from `minmo.eval.normalize.units`.
* BLEU and chrF: sacrebleu's corpus scores (its own tokenisers; `zh` for Chinese targets).
* Classification: accuracy and a confusion matrix over normalised answer strings.

The duplex F1 at K lives in `minmo.duplex.evaluate`; `minmo.eval.run` feeds it frame labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from minmo.duplex.evaluate import DuplexScore, event_times_from_frames
from minmo.eval.normalize import normalize_text, scores_characters, units
from schemas.duplex import EventType, FrameLabel


@dataclass(frozen=True)
class EditCounts:
    """Edits that turn a hypothesis into its reference, and the reference's length."""

    substitutions: int = 0
    insertions: int = 0
    deletions: int = 0
    reference: int = 0

    @property
    def edits(self) -> int:
        return self.substitutions + self.insertions + self.deletions

    @property
    def rate(self) -> float:
        """Edits per reference unit; with an empty reference, 0 when nothing was inserted."""
        if self.reference:
            return self.edits / self.reference
        return float(self.edits > 0)

    def __add__(self, other: EditCounts) -> EditCounts:
        return EditCounts(
            self.substitutions + other.substitutions,
            self.insertions + other.insertions,
            self.deletions + other.deletions,
            self.reference + other.reference,
        )

    def to_dict(self) -> dict[str, float | int]:
        return {
            "rate": self.rate,
            "substitutions": self.substitutions,
            "insertions": self.insertions,
            "deletions": self.deletions,
            "reference_units": self.reference,
        }


def edit_counts(reference: Sequence[str], hypothesis: Sequence[str]) -> EditCounts:
    """Minimum-edit alignment (unit costs) with its substitution / insertion / deletion split.
    Among equal-cost alignments the backtrace prefers a match or substitution, then a deletion,
    then an insertion, so the split is deterministic."""
    n, m = len(reference), len(hypothesis)
    # dist[i][j]: edits between reference[:i] and hypothesis[:j]
    dist = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        dist[i][0] = i
    for j in range(m + 1):
        dist[0][j] = j
    for i in range(1, n + 1):
        row, prev = dist[i], dist[i - 1]
        for j in range(1, m + 1):
            same = reference[i - 1] == hypothesis[j - 1]
            row[j] = min(prev[j - 1] + (not same), prev[j] + 1, row[j - 1] + 1)
    sub = ins = dele = 0
    i, j = n, m
    while i or j:
        if i and j and dist[i][j] == dist[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]):
            sub += reference[i - 1] != hypothesis[j - 1]
            i, j = i - 1, j - 1
        elif i and dist[i][j] == dist[i - 1][j] + 1:
            dele += 1
            i -= 1
        else:
            ins += 1
            j -= 1
    return EditCounts(sub, ins, dele, n)


def error_counts(reference: str, hypothesis: str, language: str | None) -> EditCounts:
    """Edit counts of two raw texts after normalisation, on words or characters by language."""
    return edit_counts(units(reference, language), units(hypothesis, language))


def error_rate_name(language: str | None) -> str:
    return "cer" if scores_characters(language) else "wer"


def corpus_error_rate(pairs: Sequence[tuple[str, str]], language: str | None) -> EditCounts:
    """Pooled counts over (reference, hypothesis) pairs of one language."""
    total = EditCounts()
    for ref, hyp in pairs:
        total += error_counts(ref, hyp, language)
    return total


def bleu_chrf(
    references: Sequence[str], hypotheses: Sequence[str], language: str | None = None
) -> dict[str, float]:
    """sacrebleu's corpus BLEU (0-100) and chrF (0-100), one reference per hypothesis; the
    target `language` picks BLEU's tokeniser (`zh` for Chinese, `char` for ja/ko, else 13a)."""
    import sacrebleu

    code = (language or "").lower().split("-")[0]
    tokenize = "zh" if code in ("zh", "yue") else "char" if code in ("ja", "ko") else "13a"
    refs = [list(references)]
    bleu = sacrebleu.corpus_bleu(list(hypotheses), refs, tokenize=tokenize)
    chrf = sacrebleu.corpus_chrf(list(hypotheses), refs)
    return {"bleu": float(bleu.score), "chrf": float(chrf.score)}


@dataclass
class Confusion:
    """Counts of (reference class, predicted class); classes are normalised answer strings."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, reference: str, predicted: str) -> None:
        self.counts[(normalize_text(reference), normalize_text(predicted))] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def correct(self) -> int:
        return sum(n for (r, p), n in self.counts.items() if r == p)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def matrix(self) -> dict[str, object]:
        """{"labels": [...], "counts": rows = reference, columns = prediction}: the labels are
        every reference class, then any predicted string that is no reference class."""
        refs = sorted({r for r, _ in self.counts})
        extra = sorted({p for _, p in self.counts} - set(refs))
        labels = refs + extra
        rows = [[self.counts.get((r, p), 0) for p in labels] for r in refs]
        return {"labels": labels, "counts": rows}


def duplex_events(labels: Sequence[int], hop_s: float) -> list[tuple[EventType, float]]:
    """The turn-taking events a frame-label track states: an assistant turn-taking at the first
    frame of each speak_now run, a user turn-taking at the first of each stop_now run. (A user
    back-channel lies inside keep_speaking frames and leaves no trace in the labels, so it is not
    recovered here.) Applied alike to the shard's labels and to the predictor's argmax."""
    return [
        (event, time_s)
        for event, label in _EVENT_LABELS
        for time_s in event_times_from_frames(np.asarray(labels), hop_s, label)
    ]


_EVENT_LABELS = (
    (EventType.ASSISTANT_TURN_TAKING, FrameLabel.SPEAK_NOW),
    (EventType.USER_TURN_TAKING, FrameLabel.STOP_NOW),
)
SCORED_EVENTS = tuple(event for event, _ in _EVENT_LABELS)
"""The duplex events `minmo eval` scores from frame labels."""


def duplex_f1_table(score: DuplexScore, ks: Sequence[int]) -> dict[str, dict[str, dict]]:
    """{event type: {K: f1, precision, recall and the counts}} of the events read off frame
    labels (SCORED_EVENTS): the duplex entry of eval.json and of duplex-sim's summary."""
    return {
        event.value: {
            str(k): {
                "f1": s.f1,
                "precision": s.precision,
                "recall": s.recall,
                "matched": s.matched,
                "predicted": s.predicted,
                "reference": s.reference,
            }
            for k in ks
            for s in [score.events[(event, k)]]
        }
        for event in SCORED_EVENTS
    }
