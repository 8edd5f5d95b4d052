"""Full-duplex training labels: turn-taking events and per-frame labels, per role assignment.

Every conversation of N >= 2 speakers yields N samples, one per choice of which speaker plays
the user; every other speaker stands for the assistant side (one speaker in a two-party call,
N - 1 in a meeting). `sample_id` = `<recording_id>-u<user speaker>`. `assistant_speaker` names
the assistant side: the other speaker in a two-party call, and in a meeting the other speakers'
names sorted and joined with "+" (e.g. "spk0+spk2"). Rules: minmo/duplex/labels.py.

What a stage-4 sample's input is (so that the two role samples of one conversation never give
the model the same input with contradictory labels):

* **Audio: the user's stream.** On a multi-channel recording (a stereo call, a simulated
  two-channel call) the speech input is the user's channel alone (`user_channel`); the
  assistant's own voice is not in it. On a mono recording the speech input is the mix, the only
  stream there is: both role samples then hear the same audio.
* **Assistant activity** (`assistant_activity`, int8 0/1 per label frame, same hop and length as
  `labels`): 1 where any assistant-side speaker (every speaker but the user) has a diarized turn
  overlapping the frame. A deployed system knows when it is itself talking, so the track is an
  input, not a target. It is what tells the two role samples of a mono conversation apart, and
  on a multi-channel call it carries the assistant's side that the user's channel lacks.

A frame_labels row of version 1 (a build from before the column) has no activity: the stage-4
builder skips such rows and counts them ("rerun label-turns"), rather than build samples whose
roles contradict each other.

Frame classes (`FrameLabel`), from the assistant's point of view at each frame:

* listen (0): the assistant does not hold the floor; it stays silent.
* speak_now (1): the user's turn has just ended; the assistant starts its turn at this frame
  (an `assistant_turn_taking` event).
* keep_speaking (2): the assistant holds the floor and is talking; it continues, also while the
  user says a back-channel (a `user_backchannel` event lies in these frames).
* stop_now (3): the user takes the floor at this frame (a `user_turn_taking` event); if the
  assistant is still talking (a barge-in) it stops now, otherwise it must not resume.
"""

from __future__ import annotations

import enum

import pyarrow as pa

from schemas._table import TableContract


class EventType(str, enum.Enum):
    ASSISTANT_TURN_TAKING = "assistant_turn_taking"  # at the end of the user's turn
    USER_TURN_TAKING = "user_turn_taking"  # the user starts a turn (gap T, or a barge-in)
    USER_BACKCHANNEL = "user_backchannel"  # the user speaks, the assistant keeps the floor


class FrameLabel(enum.IntEnum):
    LISTEN = 0
    SPEAK_NOW = 1
    KEEP_SPEAKING = 2
    STOP_NOW = 3


EVENTS = TableContract(
    name="events",
    version=1,
    schema=pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("recording_id", pa.string(), nullable=False),
            pa.field("user_speaker", pa.string(), nullable=False),
            pa.field("assistant_speaker", pa.string(), nullable=False),
            pa.field("event_type", pa.string(), nullable=False),
            pa.field("time_s", pa.float64(), nullable=False),
            # user_turn_taking only: the drawn gap T after the assistant's turn (null on a
            # barge-in, where the user's real start is used)
            pa.field("gap_s", pa.float64()),
            pa.field("barge_in", pa.bool_(), nullable=False),  # the user cut into a turn
        ]
    ),
    required=("sample_id", "recording_id", "user_speaker", "assistant_speaker", "event_type"),
    enums={"event_type": EventType},
    non_negative=("time_s", "gap_s"),
)

# Version 2: assistant_activity (null in a version-1 file, see the module docstring).
FRAME_LABELS = TableContract(
    name="frame_labels",
    version=2,
    schema=pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("recording_id", pa.string(), nullable=False),
            pa.field("user_speaker", pa.string(), nullable=False),
            pa.field("assistant_speaker", pa.string(), nullable=False),
            pa.field("user_channel", pa.int16(), nullable=False),  # where the user is heard
            pa.field("hop_s", pa.float64(), nullable=False),  # frame i covers [i*hop, (i+1)*hop)
            pa.field("n_frames", pa.int32(), nullable=False),
            pa.field("duration_s", pa.float64(), nullable=False),
            pa.field("labels", pa.list_(pa.int8()), nullable=False),  # FrameLabel values
            # 0/1 per frame of `labels`: an assistant-side speaker is talking (an input)
            pa.field("assistant_activity", pa.list_(pa.int8())),
        ]
    ),
    required=("sample_id", "recording_id", "user_speaker", "assistant_speaker", "labels"),
    non_negative=("hop_s", "n_frames", "duration_s"),
)
