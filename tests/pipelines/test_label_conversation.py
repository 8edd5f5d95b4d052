"""label-turns' per-conversation function, without Ray: one sample per speaker (two-party calls
and meetings), and the quarantine of conversations with one voice."""

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


def test_one_voice_is_quarantined() -> None:
    result = label_conversation(_item(("spk0", 0, 0.0, 3.0)), DuplexLabelConfig())
    (row,) = QUARANTINE.from_rows(result["tables"]["quarantine"]).to_pylist()
    assert row["reason_code"] == "not_two_party" and row["item_key"] == "rec"
    assert row["step"] == "label-turns"
    assert "events" not in result["tables"]


def test_a_meeting_gives_one_sample_per_speaker() -> None:
    """Three speakers are no longer quarantined: each plays the user once, the other two stand
    for the assistant side (named "+"-joined in assistant_speaker)."""
    turns = [("spk0", 0, 0.0, 3.0), ("spk1", 0, 3.5, 5.0), ("spk2", 0, 5.6, 7.0)]
    result = label_conversation(_item(*turns), DuplexLabelConfig(gap_std_s=0.0))
    assert "quarantine" not in result["tables"]
    events = EVENTS.from_rows(result["tables"]["events"]).to_pylist()
    labels = FRAME_LABELS.from_rows(result["tables"]["frame_labels"]).to_pylist()
    assert [(r["sample_id"], r["assistant_speaker"]) for r in labels] == [
        ("rec-uspk0", "spk1+spk2"),
        ("rec-uspk1", "spk0+spk2"),
        ("rec-uspk2", "spk0+spk1"),
    ]
    assert all(r["n_frames"] == 84 for r in labels)
    by_sample = {
        sid: [(e["event_type"], e["time_s"]) for e in events if e["sample_id"] == sid]
        for sid in ("rec-uspk0", "rec-uspk1", "rec-uspk2")
    }
    # spk1 hands over to spk2 inside spk0's assistant side: only spk0's own turn end counts.
    assert by_sample["rec-uspk0"] == [("assistant_turn_taking", 3.0)]
    assert by_sample["rec-uspk1"] == [("user_turn_taking", 3.6), ("assistant_turn_taking", 5.0)]
    assert by_sample["rec-uspk2"] == [("user_turn_taking", 5.6)]  # 0.6 s after spk1: T = 0.6
    assert result["stats"]["samples"] == 3 and result["stats"]["meetings"] == 1
    assert result["stats"]["floor_transfers"] == 2  # spk0 -> spk1 -> spk2, the meeting as a whole
