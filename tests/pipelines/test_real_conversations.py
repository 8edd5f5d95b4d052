"""Real two-party calls through ingest -> diarize -> label-turns, checked against the references
beside them: a stereo 8 kHz customer-service call (weak per-channel energy-VAD RTTM) and a mono
telephone call (pyannote's own reference RTTM)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from minmo.diarization.metrics import read_rttm, score
from minmo.duplex.evaluate import label_agreement
from minmo.duplex.labels import DuplexLabelConfig, Span, analyse
from pipelines.build import BuildDir
from pipelines.diarize import DiarizeConfig, run_diarize
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.run import read_table, run_ingest
from pipelines.label_turns import LabelTurnsConfig, run_label_turns
from schemas import EventType

STEREO = "stereo_aws_lca_autorepairs40/Auto_Repairs_40_UTC_stereo"
MONO = "diar_pyannote_sample/sample"


@pytest.fixture(scope="module")
def calls(ray_local, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("calls")
    manifest = root / "calls.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"path": str(shared_data / f"{stem}.wav"), "task": "conversation"}) + "\n"
            for stem in (STEREO, MONO)
        )
    )
    build = str(root / "build")
    run_ingest(str(manifest), build, IngestConfig(corpus="calls"), progress=False)
    run_diarize(build, DiarizeConfig(), progress=False)
    run_label_turns(build, LabelTurnsConfig(), progress=False)
    b = BuildDir(build)
    tables = {n: read_table(b, n).to_pylist() for n in ("recordings", "turns", "events")}
    out: dict[str, Any] = {"tables": tables}
    for stem in (STEREO, MONO):
        rec = next(r for r in tables["recordings"] if r["source_uri"].endswith(f"{stem}.wav"))
        rid = rec["recording_id"]
        (ref,) = read_rttm(
            shared_data / f"{stem}{'.energyvad' if stem == STEREO else ''}.rttm"
        ).values()
        out[stem] = {
            "rec": rec,
            "turns": [t for t in tables["turns"] if t["recording_id"] == rid],
            "events": [e for e in tables["events"] if e["recording_id"] == rid],
            "reference": [Span(*t) for t in ref],
        }
    return out


def _spans(turns: list[dict[str, Any]]) -> list[Span]:
    return [Span(t["speaker"], t["start_s"], t["end_s"]) for t in turns]


def test_stereo_call_diarized_by_channel(calls: dict[str, Any]) -> None:
    call = calls[STEREO]
    assert {t["backend"] for t in call["turns"]} == {"channels"}
    assert {t["speaker"] for t in call["turns"]} == {"ch0", "ch1"}
    # The RTTM is an energy VAD, not a human reference: agreement within 10% is what is sane.
    assert score(call["reference"], _spans(call["turns"])).der <= 0.10


def test_mono_call_diarized_offline_within_the_target(calls: dict[str, Any]) -> None:
    call = calls[MONO]
    assert {t["backend"] for t in call["turns"]} == {"offline"}
    assert score(call["reference"], _spans(call["turns"])).der <= 0.12


@pytest.mark.parametrize("stem", [STEREO, MONO])
def test_event_counts_and_timings_are_sane(calls: dict[str, Any], stem: str) -> None:
    call = calls[stem]
    duration = call["rec"]["duration_s"]
    ref_transfers = len(analyse(call["reference"], DuplexLabelConfig()).transfers)
    events = call["events"]
    assert all(0.0 <= e["time_s"] <= duration + 2.0 for e in events)
    for user in {e["user_speaker"] for e in events}:
        own = [e for e in events if e["user_speaker"] == user]
        taking = [e for e in own if e["event_type"] != EventType.USER_BACKCHANNEL.value]
        # Floor transfers found from the diarized turns: within a third of the reference's.
        assert abs(len(taking) - ref_transfers) <= max(2, ref_transfers / 3), (user, len(taking))
        gaps = [e["gap_s"] for e in own if e["gap_s"] is not None]
        assert all(g >= 0 for g in gaps) and (not gaps or np.median(gaps) < 2.0)


@pytest.mark.parametrize(("stem", "minimum_f1"), [(STEREO, 0.8), (MONO, 0.7)])
def test_turn_taking_labels_match_labels_from_the_reference(
    calls: dict[str, Any], stem: str, minimum_f1: float
) -> None:
    call = calls[stem]
    rid, duration = call["rec"]["recording_id"], call["rec"]["duration_s"]
    agreement = label_agreement(
        [(rid, duration, _spans(call["turns"]), call["reference"])], DuplexLabelConfig()
    )
    for event_type in (EventType.ASSISTANT_TURN_TAKING, EventType.USER_TURN_TAKING):
        assert agreement.f1(event_type, 10) >= minimum_f1, agreement.render()
