"""A two-track call (one file per channel) through ingest to the diarize step's channel path.

Real speech: ../shared/data/stereo_fasterwhisper_2ch (one voice per channel) and
stereo_mcgill_M1F1 (8 kHz, male left / female right), each written out as two mono files the
way telephone corpora and call-recording exports ship them. One manifest lists them as JSONL rows
whose `path` is a list, beside a pair whose files disagree in length; a Lhotse manifest lists the
first call again as a multi-source recording.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from pipelines.build import BuildDir
from pipelines.diarize import DiarizeConfig, DiarizeStage, conversations_to_diarize
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.run import read_table, run_ingest

CALL = Path("stereo_fasterwhisper_2ch") / "stereo_diarization.wav"
MCGILL = Path("stereo_mcgill_M1F1") / "M1F1-int16-AFsp.wav"


def _split(stereo: Path, left: Path, right: Path, trim_right_s: float = 0.0) -> None:
    samples, rate = sf.read(stereo, dtype="int16")
    sf.write(left, samples[:, 0], rate, subtype="PCM_16")
    end = samples.shape[0] - round(trim_right_s * rate)
    sf.write(right, samples[:end, 1], rate, subtype="PCM_16")


def _lhotse_call(root: Path, calls: Path) -> None:
    """The call as a Lhotse multi-source recording, beside its own copy of the two files."""
    from lhotse import AudioSource, Recording, RecordingSet

    root.mkdir()
    for name in ("call_a.wav", "call_b.wav"):
        shutil.copy(calls / name, root / name)
    info = sf.info(root / "call_a.wav")
    recording = Recording(
        id="call",
        sources=[  # listed right channel first: ingest stacks them in channel order
            AudioSource(type="file", channels=[1], source="call_b.wav"),
            AudioSource(type="file", channels=[0], source="call_a.wav"),
        ],
        sampling_rate=info.samplerate,
        num_samples=info.frames,
        duration=info.duration,
    )
    RecordingSet.from_recordings([recording]).to_file(root / "recordings.jsonl.gz")


@pytest.fixture(scope="module")
def built(ray_local, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("multi")
    calls = root / "calls"
    calls.mkdir()
    _split(shared_data / CALL, calls / "call_a.wav", calls / "call_b.wav")
    _split(shared_data / MCGILL, calls / "m_a.wav", calls / "m_b.wav", trim_right_s=0.04)
    _split(shared_data / CALL, calls / "torn_a.wav", calls / "torn_b.wav", trim_right_s=1.0)
    rows = [
        {"id": "call", "path": ["call_a.wav", "call_b.wav"], "task": "conversation"},
        {"id": "mcgill", "path": ["m_a.wav", "m_b.wav"], "task": "conversation"},
        {"id": "torn", "path": ["torn_a.wav", "torn_b.wav"], "task": "conversation"},
    ]
    (calls / "calls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _lhotse_call(root / "lhotse", calls)
    sources = [str(calls / "calls.jsonl"), str(root / "lhotse")]
    build = str(root / "build")
    summary = run_ingest(sources, build, IngestConfig(), progress=False)
    tables = {t: read_table(BuildDir(build), t).to_pylist() for t in ("recordings", "quarantine")}
    return {"build": build, "calls": calls, "sources": sources, "summary": summary, **tables}


def test_two_files_become_one_stereo_recording_with_a_stable_key(built: dict[str, Any]) -> None:
    by_key = {r["source_key"]: r for r in built["recordings"]}
    call = by_key['calls:channels:["call_a.wav","call_b.wav"]']
    assert (call["channels"], call["source_channels"], call["sample_rate_hz"]) == (2, 2, 16000)
    assert abs(call["duration_s"] - 5.0) < 1e-6 and call["task"] == "conversation"
    mcgill = by_key['calls:channels:["m_a.wav","m_b.wav"]']
    assert (mcgill["channels"], mcgill["sample_rate_hz"]) == (2, 8000)
    # the Lhotse listing of the same call (sources in another order) stacks the same audio
    lhotse = by_key['lhotse:channels:["call_a.wav","call_b.wav"]']
    assert lhotse["content_sha1"] == call["content_sha1"]
    assert lhotse["dup_of"] == call["recording_id"]  # listed later: the duplicate
    assert len(built["recordings"]) == 3


def test_a_mismatched_pair_is_quarantined_and_the_job_goes_on(built: dict[str, Any]) -> None:
    summary = built["summary"]
    assert dict(summary.quarantined) == {"channel_length_mismatch": 1, "channels_padded": 1}
    assert (summary.listed, summary.recordings, summary.refused) == (4, 3, 1)
    rows = {r["reason_code"]: r for r in built["quarantine"]}
    torn = rows["channel_length_mismatch"]
    assert torn["source_key"] == 'calls:channels:["torn_a.wav","torn_b.wav"]'
    assert "by 1.000 s" in torn["detail"]
    assert "torn_a.wav 5.000 s" in torn["detail"] and "torn_b.wav 4.000 s" in torn["detail"]
    padded = rows["channels_padded"]  # kept, and noted
    assert padded["source_key"] == 'calls:channels:["m_a.wav","m_b.wav"]'
    assert "m_b.wav" in padded["detail"] and "padded with 0.040 s" in padded["detail"]


def test_a_rerun_ingests_nothing_again(built: dict[str, Any]) -> None:
    again = run_ingest(built["sources"], built["build"], IngestConfig(), progress=False)
    assert again.units_run == 0 and again.recordings == 3
    assert read_table(BuildDir(built["build"]), "recordings").to_pylist() == built["recordings"]


def test_the_call_reaches_the_diarize_steps_channel_path(built: dict[str, Any]) -> None:
    config = DiarizeConfig()
    pending = conversations_to_diarize(BuildDir(built["build"]), config)
    assert len(pending) == 2  # the call and the McGill pair; the Lhotse duplicate is skipped
    call = next(r for r in pending if r["source_uri"].endswith('call_b.wav"]'))
    result = DiarizeStage(config.to_dict()).diarize(call)
    assert result["stats"]["backend_channels"] == 1
    turns = result["tables"]["turns"]
    assert {(t["speaker"], t["channel"]) for t in turns} == {("ch0", 0), ("ch1", 1)}
    # each side's speech is where that file has its energy
    audio = {c: sf.read(built["calls"] / f"call_{s}.wav")[0] for c, s in ((0, "a"), (1, "b"))}
    for turn in turns:
        span = audio[turn["channel"]][int(turn["start_s"] * 16000) : int(turn["end_s"] * 16000)]
        assert np.sqrt(np.mean(span**2)) > 0.01
