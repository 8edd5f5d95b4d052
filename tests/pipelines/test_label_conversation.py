"""label-turns' per-conversation function, without Ray: rows of both role assignments, and the
quarantine of conversations that are not two-party."""

from __future__ import annotations

from minmo.duplex.labels import DuplexLabelConfig
from pipelines.label_turns import label_conversation
from schemas import EVENTS, FRAME_LABELS, QUARANTINE


def _item(*turns: tuple[str, int, float, float]) -> dict:
    return {
        "recording_id": "rec",
        "source_uri": "/x/rec.wav",
        "duration_s": 10.0,
        "turns": [{"speaker": s, "channel": c, "start_s": a, "end_s": b} for s, c, a, b in turns],
    }


def test_two_samples_with_valid_rows() -> None:
    result = label_conversation(
        _item(("ch0", 0, 0.0, 3.0), ("ch1", 1, 3.5, 6.0), ("ch0", 0, 6.1, 9.0)), DuplexLabelConfig()
    )
    events = EVENTS.from_rows(result["tables"]["events"])
    labels = FRAME_LABELS.from_rows(result["tables"]["frame_labels"])
    assert sorted(labels.column("sample_id").to_pylist()) == ["rec-uch0", "rec-uch1"]
    assert labels.column("user_channel").to_pylist() == [0, 1]
    assert labels.column("n_frames").to_pylist() == [84, 84]  # ceil(10 / 0.12)
    assert events.num_rows == 4  # two hand-overs, seen from each side
    assert result["lists"]["transfer_offsets_s"] == [0.5, 0.1]
    assert result["stats"]["floor_transfers"] == 2
    # Each role's assistant activity is the other speaker's speech, frame by frame.
    activity = dict(
        zip(
            labels.column("user_speaker").to_pylist(),
            labels.column("assistant_activity").to_pylist(),
            strict=True,
        )
    )
    assert len(activity["ch0"]) == len(activity["ch1"]) == 84
    assert [i for i, v in enumerate(activity["ch0"]) if v] == list(range(29, 50))  # 3.5..6.0 s
    talks_ch0 = [i for i, v in enumerate(activity["ch1"]) if v]
    assert talks_ch0 == list(range(0, 25)) + list(range(50, 75))  # 0..3.0 s, 6.1..9.0 s


def test_not_two_party_is_quarantined() -> None:
    for turns in (
        [("spk0", 0, 0.0, 3.0)],
        [("spk0", 0, 0.0, 3.0), ("spk1", 0, 3.5, 5.0), ("spk2", 0, 5.5, 7.0)],
    ):
        result = label_conversation(_item(*turns), DuplexLabelConfig())
        (row,) = QUARANTINE.from_rows(result["tables"]["quarantine"]).to_pylist()
        assert row["reason_code"] == "not_two_party" and row["item_key"] == "rec"
        assert row["step"] == "label-turns"
        assert "events" not in result["tables"]
