"""DER / JER helpers: hand-made references with known error seconds, collars (pyannote's total
width), overlap skipping, UEM, pooling, RTTM reading, and no pyannote import at package import."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from minmo.diarization.metrics import DiarizationScore, read_rttm, score
from minmo.diarization.types import SpeakerSegment


@dataclass(frozen=True)
class Span:
    speaker: str
    start_s: float
    end_s: float


# Two speakers, 10 s of speech, boundaries at 0, 5 and 10 s.
REFERENCE = [("A", 0.0, 5.0), ("B", 5.0, 10.0)]


def test_perfect_hypothesis_with_other_names_scores_zero() -> None:
    s = score(REFERENCE, [("spk1", 0.0, 5.0), ("spk0", 5.0, 10.0)], collar=0.0)
    assert s.der == 0.0 and s.jer == 0.0 and s.total_s == pytest.approx(10.0)


def test_one_missed_second_away_from_boundaries_is_ten_percent() -> None:
    hyp = [("x", 0.0, 5.0), ("y", 5.0, 7.0), ("y", 8.0, 10.0)]  # 7-8 s missed
    for collar in (0.0, 0.25, 0.5):
        s = score(REFERENCE, hyp, collar=collar)
        assert s.missed_s == pytest.approx(1.0)
        assert s.false_alarm_s == 0.0 and s.confusion_s == 0.0
    assert score(REFERENCE, hyp, collar=0.0).der == pytest.approx(0.10)
    # collar 0.25 removes 0.125 s inside 0 and 10, and 0.25 s around 5: 9.5 s are scored
    assert score(REFERENCE, hyp, collar=0.25).total_s == pytest.approx(9.5)
    assert score(REFERENCE, hyp, collar=0.25).der == pytest.approx(1.0 / 9.5)


def test_false_alarm_and_confusion_seconds() -> None:
    hyp = [("x", 0.0, 5.0), ("y", 5.0, 9.0), ("x", 9.0, 10.0), ("x", 11.0, 12.0)]
    s = score(REFERENCE, hyp, collar=0.0)
    assert s.confusion_s == pytest.approx(1.0)
    assert s.false_alarm_s == pytest.approx(1.0)
    assert s.der == pytest.approx(0.2)
    assert s.error_s == pytest.approx(2.0)


def test_collar_is_total_width_centred_on_reference_boundaries() -> None:
    late = [("x", 0.0, 5.1), ("y", 5.1, 10.0)]  # the change is found 0.1 s late
    assert score(REFERENCE, late, collar=0.0).confusion_s == pytest.approx(0.1)
    assert score(REFERENCE, late, collar=0.25).der == 0.0  # 0.1 < 0.25 / 2
    later = [("x", 0.0, 5.2), ("y", 5.2, 10.0)]
    assert score(REFERENCE, later, collar=0.25).confusion_s == pytest.approx(0.075)


def test_jer_is_mean_of_per_speaker_jaccard_errors() -> None:
    # A perfect; B: reference 5-10, hypothesis 6-10 -> miss 1 s over a union of 5 s = 0.2
    s = score(REFERENCE, [("x", 0.0, 5.0), ("y", 6.0, 10.0)], collar=0.0)
    assert s.jer == pytest.approx(0.1)
    assert s.der == pytest.approx(0.1)


def test_skip_overlap_and_uem() -> None:
    reference = [("A", 0.0, 6.0), ("B", 4.0, 10.0)]  # 4-6 s overlapped
    hypothesis = [("x", 0.0, 5.0), ("y", 5.0, 10.0)]  # one speaker per instant
    full = score(reference, hypothesis, collar=0.0)
    assert full.total_s == pytest.approx(12.0) and full.missed_s == pytest.approx(2.0)
    skipped = score(reference, hypothesis, collar=0.0, skip_overlap=True)
    assert skipped.total_s == pytest.approx(8.0) and skipped.der == 0.0
    first_half = score(reference, hypothesis, collar=0.0, uem=[(0.0, 4.0)])
    assert first_half.total_s == pytest.approx(4.0) and first_half.der == 0.0


def test_speaker_segments_are_accepted_and_bad_segments_refused() -> None:
    hyp = [SpeakerSegment("spk0", 0, 0.0, 5.0, 0.9), SpeakerSegment("spk1", 0, 5.0, 10.0, 0.8)]
    assert score(REFERENCE, hyp, collar=0.0).der == 0.0
    spans = [Span("x", 0.0, 5.0), Span("y", 5.0, 10.0)]  # any object with those attributes
    assert score(spans, hyp, collar=0.0).der == 0.0
    with pytest.raises(ValueError, match="start_s <= end_s"):
        score(REFERENCE, [("x", 3.0, 2.0)])


def test_empty_reference_and_hypothesis() -> None:
    assert score([], [], collar=0.0).der == 0.0
    assert score([], [("x", 0.0, 1.0)], collar=0.0).der == 1.0
    assert score(REFERENCE, [], collar=0.0).der == pytest.approx(1.0)


def test_combine_pools_seconds_and_weights_jer_by_reference_time() -> None:
    a = DiarizationScore(der=0.1, jer=0.2, missed_s=1, false_alarm_s=0, confusion_s=0, total_s=10)
    b = DiarizationScore(der=0.5, jer=0.6, missed_s=0, false_alarm_s=5, confusion_s=10, total_s=30)
    pooled = DiarizationScore.combine([a, b])
    assert pooled.der == pytest.approx(16 / 40)
    assert pooled.jer == pytest.approx((0.2 * 10 + 0.6 * 30) / 40)
    assert pooled.total_s == 40 and pooled.confusion_s == 10
    assert DiarizationScore.combine([a]) == a
    with pytest.raises(ValueError, match="at least one"):
        DiarizationScore.combine([])


def test_read_rttm(tmp_path: Path, shared_data: Path) -> None:
    path = tmp_path / "two.rttm"
    path.write_text(
        ";; comment\n"
        "SPEAKER rec1 1 0.500 1.250 <NA> <NA> alice <NA> <NA>\n"
        "SPKR-INFO rec1 1 <NA> <NA> <NA> unknown alice <NA> <NA>\n"
        "SPEAKER rec2 1 2.000 0.500 <NA> <NA> bob <NA> <NA>\n"
        "\n"
    )
    assert read_rttm(path) == {"rec1": [("alice", 0.5, 1.75)], "rec2": [("bob", 2.0, 2.5)]}
    (sample,) = read_rttm(shared_data / "diar_pyannote_sample" / "sample.rttm").values()
    assert len(sample) == 10 and {s for s, _, _ in sample} == {"speaker90", "speaker91"}
    path.write_text("SPEAKER rec1 1 0.5\n")
    with pytest.raises(ValueError, match="8 fields"):
        read_rttm(path)


def test_importing_metrics_does_not_import_pyannote() -> None:
    code = (
        "import sys, minmo.diarization.metrics, minmo.diarization.offline; "
        "print(any(m.startswith('pyannote') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
