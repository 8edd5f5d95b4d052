"""The eval metrics against cases computed by hand."""

from __future__ import annotations

import pytest

from minmo.eval.metrics import (
    Confusion,
    EditCounts,
    bleu_chrf,
    corpus_error_rate,
    duplex_events,
    edit_counts,
    error_counts,
    error_rate_name,
)
from minmo.eval.normalize import normalize_text, units
from minmo.eval.run import TaskScore
from schemas.duplex import EventType
from schemas.eval import EVAL_VERSION, EvalSchemaError, validate_eval


def test_edit_counts_split_substitutions_insertions_deletions() -> None:
    # a b c d -> a x c d e: b/x substituted, e inserted
    assert edit_counts(["a", "b", "c", "d"], ["a", "x", "c", "d", "e"]) == EditCounts(1, 1, 0, 4)
    # the cat sat -> the sat: cat deleted
    counts = edit_counts(["the", "cat", "sat"], ["the", "sat"])
    assert counts == EditCounts(0, 0, 1, 3) and counts.rate == pytest.approx(1 / 3)
    assert edit_counts([], ["x", "y"]) == EditCounts(0, 2, 0, 0)
    assert edit_counts(["x"], []).rate == 1.0
    assert EditCounts().rate == 0.0


def test_corpus_rate_is_total_edits_over_total_reference_units() -> None:
    pairs = [("a b", "a b"), ("c d e f", "c")]
    total = corpus_error_rate(pairs, "en")
    assert total.edits == 3 and total.reference == 6
    assert total.rate == pytest.approx(0.5)  # a mean of per-sample rates would be 0.375


def test_normaliser_english() -> None:
    assert normalize_text("Hello, World!  It's 1,000 dollars—3.5%.") == (
        "hello world it's 1000 dollars 3.5"
    )
    assert normalize_text("Don’t  STOP-now") == "don't stop now"
    # digits and number words are not converted into each other
    assert error_counts("twenty dollars", "20 dollars", "en") == EditCounts(1, 0, 0, 2)
    assert error_counts("Hello, world.", "hello world", "en").edits == 0


def test_normaliser_chinese_scores_characters_without_punctuation() -> None:
    assert units("今天，天气很好。", "zh") == list("今天天气很好")
    assert units("ＡＩ 很好！", "zh") == ["a", "i", "很", "好"]  # full-width folded, spaces gone
    # 气 -> 汽 substituted, 很 deleted: 2 edits over 6 characters
    counts = error_counts("今天天气很好。", "今天天汽好", "zh")
    assert counts == EditCounts(1, 0, 1, 6)
    assert error_rate_name("zh") == "cer" and error_rate_name("yue") == "cer"
    assert error_rate_name("en") == "wer" and error_rate_name(None) == "wer"


def test_bleu_and_chrf() -> None:
    same = bleu_chrf(["the cat sat on the mat"], ["the cat sat on the mat"], "en")
    assert same == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}
    # 1- to 4-gram precisions 3/4, 2/3, 1/2, 0/1; sacrebleu's default `exp` smoothing turns the
    # zero 4-gram count into 1/(2 * 1); no brevity penalty: (3/4 * 2/3 * 1/2 * 1/2) ** (1/4)
    score = bleu_chrf(["a b c d"], ["a b c e"], "en")
    assert score["bleu"] == pytest.approx(100 * 0.125**0.25, abs=0.01)
    assert 0 < score["chrf"] < 100
    assert bleu_chrf(["完全不同"], ["毫无关系"], "zh")["bleu"] < 1.0


def test_confusion_matrix_and_accuracy() -> None:
    confusion = Confusion()
    for ref, pred in [("English", "english"), ("english", "German"), ("Chinese", "chinese.")]:
        confusion.add(ref, pred)
    assert confusion.accuracy == pytest.approx(2 / 3)
    assert confusion.matrix() == {
        "labels": ["chinese", "english", "german"],
        "counts": [[1, 0, 0], [0, 1, 1]],
    }


def test_duplex_events_from_frame_labels() -> None:
    labels = [0, 1, 1, 2, 2, 3, 0, 0, 1, 2]
    assert duplex_events(labels, 0.12) == [
        (EventType.ASSISTANT_TURN_TAKING, 0.12),
        (EventType.ASSISTANT_TURN_TAKING, pytest.approx(0.96)),
        (EventType.USER_TURN_TAKING, pytest.approx(0.6)),
    ]


def test_eval_json_schema_refuses_another_version_and_bad_figures() -> None:
    doc = {
        "version": EVAL_VERSION,
        "checkpoint": "ck/final",
        "stage": "1b",
        "modules": ["input_projector"],
        "shards": "shards/stage1/test",
        "samples": 2,
        "tasks": {"language_id": {"samples": 2, "accuracy": 0.5}},
    }
    assert validate_eval(doc) is doc
    with pytest.raises(EvalSchemaError, match="version 0, .* rerun `minmo eval`"):
        validate_eval({**doc, "version": 0})
    bad = {**doc, "tasks": {"language_id": {"samples": 2, "accuracy": 1.5}}}
    with pytest.raises(EvalSchemaError, match="tasks/language_id/accuracy"):
        validate_eval(bad)


def test_contextual_asr_hotword_recall_counts_hotwords_the_reference_holds() -> None:
    score = TaskScore("contextual_asr")
    messages = [{"role": "assistant", "content": "See you tomorrow in Paris."}]
    meta = {"key": "k", "language": "en", "messages": messages}
    # "berlin" is a distractor (not in the reference): it counts for neither side
    meta["provenance"] = {"hotwords": ["tomorrow", "Paris", "berlin"]}
    score.add_text(meta, "see you tomorrow in parents")
    zh = {
        "key": "z",
        "language": "zh",
        "messages": [{"role": "assistant", "content": "我们去北京。"}],
    }
    zh["provenance"] = {"hotwords": ["北京"]}
    score.add_text(zh, "我们去北京")
    result = score.result()
    assert result["hotword_recall"] == {"recall": 2 / 3, "recalled": 2, "hotwords": 3}
    assert result["wer"]["reference_units"] == 5 and result["wer"]["substitutions"] == 1
    assert result["cer"]["rate"] == 0.0 and sorted(result["by_language"]) == ["en", "zh"]
