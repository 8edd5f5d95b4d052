"""Training stages and the task names each one holds: the contract the sample builders, the
shards step's `mixture`, the capacity plan and the shards' `task` field share.

Owns only the names (DESIGN.md §1 taxonomy), in one light module: `minmo/plan.py` needs them and
must not import `pipelines/` (whose builders pull in the text tokenizer). What builds each task
lives in pipelines/samples/builders.py; a stage-1 task's builder is registered there under one
of these names.
"""

from __future__ import annotations

STAGES = ("stage1", "stage2", "stage3", "stage4")

STAGE_TASKS: dict[str, tuple[str, ...]] = {
    "stage1": (
        "asr",
        "contextual_asr",
        "language_id",
        "speech_translation",
        "emotion",
        "audio_event",
        "speaker_analysis",
        "s2t_chat",
    ),
    "stage2": ("tts", "instruct_tts"),
    "stage3": ("s2s_chat", "s2s_style_chat"),
    "stage4": ("duplex",),
}
"""Every stage's tasks; a shard sample's `task` and a mixture's keys are one of these."""
