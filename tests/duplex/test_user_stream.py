"""The user's stream (issue 18, item 1): both role samples of one REAL conversation, built by the
pipeline's own functions (label-turns' labeller -> the stage-4 spec builder -> the shard member
encoding -> the trainer's decode -> the collator), then the tiny MinMo's duplex predictor
overfitted on the pair.

On a mono call both role samples hear the same audio under the same prompt; only the
assistant-activity track tells them apart. Without it (the old behaviour: the same mixdown, no
activity) the two samples are the same input with opposite labels on every frame where someone
talks, so no predictor can get both right: `test_mono_pair_overfits_only_with_the_activity_track`
trains the same predictor with the track zeroed and shows it failing (both roles cannot pass),
then with the track and shows both roles passing. Measured (24 s of the pyannote sample, 60
steps, accuracy on non-listen / listen frames per role, speaker90 / speaker91 as the user):
without the track 0.52 / 0.78 and 0.38 / 0.76 (fails); with it 1.00 / 0.99 and 0.99 / 0.99.
On today's main the test cannot even build its batch: no activity column, member or input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from minmo.audio.encode import flac_bytes
from minmo.diarization.metrics import read_rttm
from minmo.duplex.labels import DuplexLabelConfig
from minmo.io.shards import npy_bytes
from minmo.model.batch import IGNORE, Batch, collate
from minmo.model.minmo import MinMo, MinMoConfig, SpecialIds
from minmo.tokens.text import encode_chat, load_text_tokenizer
from minmo.train.data import decode_sample
from pipelines.audio_source import RecordingCache
from pipelines.build import BuildDir
from pipelines.label_turns import label_conversation
from pipelines.samples import sources
from pipelines.samples.builders import SampleConfig, StageBuilder
from schemas import FRAME_LABELS, FrameLabel

MONO = "diar_pyannote_sample/sample"
STEREO = "stereo_aws_lca_autorepairs40/Auto_Repairs_40_UTC_stereo"
CROP_S = 24.0  # the mono call's turn-taking lies in 6.7..30 s; 24 s keeps the test fast
TARGET = 0.9
STEPS = 60


def _conversation(
    shared_data: Path, stem: str, rttm_suffix: str, channels: int
) -> tuple[dict[str, Any], sources.RecordingInfo]:
    """The reference turns of a real call, cropped to CROP_S, as label-turns' work item."""
    (turns,) = read_rttm(shared_data / f"{stem}{rttm_suffix}.rttm").values()
    speakers = sorted({s for s, _, _ in turns})
    uri = str(shared_data / f"{stem}.wav")
    item = {
        "recording_id": Path(stem).name,
        "source_uri": uri,
        "duration_s": CROP_S,
        "turns": [
            {
                "speaker": s,
                # A stereo call: one speaker per channel, in name order (as the RTTM's channel
                # field 1/2 has it for this call: caller on 1, agent on 2).
                "channel": speakers.index(s) if channels > 1 else 0,
                "start_s": a,
                "end_s": min(b, CROP_S),
            }
            for s, a, b in turns
            if a < CROP_S
        ],
    }
    rec = sources.RecordingInfo(
        uri, f"shared:{Path(stem).name}", channels, "shared", CROP_S, None, False
    )
    return item, rec


def _specs(tmp_path: Path, item: dict[str, Any], rec: sources.RecordingInfo) -> list[dict]:
    """label-turns' rows for both roles -> a frame_labels part file -> the stage-4 specs."""
    result = label_conversation(item, DuplexLabelConfig())
    build = BuildDir(str(tmp_path / "build"))
    table_dir = Path(build.table_dir("frame_labels"))
    table_dir.mkdir(parents=True)
    pq.write_table(
        FRAME_LABELS.from_rows(result["tables"]["frame_labels"]), table_dir / "p0.parquet"
    )
    builder = StageBuilder(build, SampleConfig(), recs={item["recording_id"]: rec})
    specs = list(builder.specs("stage4"))
    assert len(specs) == 2 and not builder.counts.skipped
    return specs


def _decoded(spec: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """A spec -> the shard members the shards step writes -> the trainer's decoded sample."""
    audio = RecordingCache({}).span(spec["input_audio"])
    ids = encode_chat(tokenizer, spec["messages"])
    meta = {"key": spec["key"], "stage": "stage4", "target_start": int(ids.size)}
    members = {
        "json": json.dumps(meta).encode(),
        "flac": flac_bytes(audio),
        "text_tokens.npy": npy_bytes(ids),
        "labels.npy": npy_bytes(np.asarray(spec["labels"], dtype=np.int8)),
        "assistant_activity.npy": npy_bytes(np.asarray(spec["assistant_activity"], np.int8)),
    }
    return decode_sample(spec["key"], members)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_text_tokenizer(None)


def _accuracies(logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, float]]:
    """Per sample: (accuracy on the non-listen frames, accuracy on the listen frames)."""
    n = min(logits.shape[1], labels.shape[1])
    pred, gold = logits[:, :n].argmax(-1), labels[:, :n]
    out = []
    for b in range(gold.shape[0]):
        speak = (gold[b] != IGNORE) & (gold[b] != FrameLabel.LISTEN)
        listen = gold[b] == FrameLabel.LISTEN
        out.append(
            (
                float((pred[b][speak] == gold[b][speak]).float().mean()),
                float((pred[b][listen] == gold[b][listen]).float().mean()),
            )
        )
    return out


def _overfit(model: MinMo, batch: Batch) -> list[tuple[float, float]]:
    """Train the stage-4 predictor on the pair; the frozen front runs once (its frames are the
    same every step), the predictor as MinMo.forward calls it. Accuracies from a full forward."""
    captured: dict[str, tuple] = {}

    def keep_inputs(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        captured["args"] = args

    hook = model.duplex.register_forward_hook(keep_inputs)
    model.apply_recipe("4")
    with torch.no_grad():
        model(batch)
    hook.remove()
    frames, activity, padding = captured["args"]
    n = min(frames.shape[1], batch.labels.shape[1])
    labels = batch.labels[:, :n].masked_fill(padding[:, :n], IGNORE)
    optimizer = torch.optim.AdamW(model.duplex.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(STEPS):
        loss = model.duplex.loss(model.duplex(frames, activity, padding)[:, :n], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(batch)
    return _accuracies(out["duplex_logits"], labels)


def _model(tokenizer: Any) -> MinMo:
    torch.manual_seed(0)
    config = MinMoConfig.tiny(vocab_size=len(tokenizer))
    return MinMo(config, SpecialIds.from_tokenizer(tokenizer), len(tokenizer))


def test_mono_pair_overfits_only_with_the_activity_track(
    shared_data: Path, tmp_path: Path, tokenizer: Any
) -> None:
    item, rec = _conversation(shared_data, MONO, "", channels=1)
    specs = _specs(tmp_path, item, rec)
    a, b = (_decoded(s, tokenizer) for s in specs)
    # The pair: one conversation, each speaker the user once; same audio, same prompt.
    assert {s["meta"]["user_speaker"] for s in specs} == {"speaker90", "speaker91"}
    assert a["audio"].shape[0] == 1 and np.array_equal(a["audio"], b["audio"])
    assert np.array_equal(a["text_tokens"], b["text_tokens"])
    assert a["labels"].size == a["assistant_activity"].size == b["assistant_activity"].size
    # Roles flip the activity: each side's track is the other speaker's speech.
    assert (a["assistant_activity"] != b["assistant_activity"]).mean() > 0.3
    batch = collate([a, b])
    assert batch.waves is not None and batch.waves.ndim == 2
    assert batch.assistant_activity is not None
    contradictory = (batch.labels[0] != batch.labels[1]).float().mean()
    assert contradictory > 0.3, f"only {contradictory:.2f} of the frames differ between roles"

    # The old behaviour: the same input for both roles (mixdown, no activity): cannot pass.
    zeroed = Batch(**{**batch.__dict__, "assistant_activity": torch.zeros_like(batch.labels)})
    old = _overfit(_model(tokenizer), zeroed)
    assert min(min(acc) for acc in old) < TARGET, f"without activity: {old}"

    new = _overfit(_model(tokenizer), batch)
    for user, (speak, listen) in zip(("speaker90", "speaker91"), new, strict=True):
        assert speak >= TARGET and listen >= TARGET, (
            f"user {user}: non-listen {speak:.3f}, listen {listen:.3f} (without activity: {old})"
        )


def test_stereo_call_feeds_the_users_channel_only(
    shared_data: Path, tmp_path: Path, tokenizer: Any
) -> None:
    item, rec = _conversation(shared_data, STEREO, ".energyvad", channels=2)
    specs = _specs(tmp_path, item, rec)
    whole = RecordingCache({}).span({**specs[0]["input_audio"], "channel": None})
    assert whole.shape[0] == 2
    for spec in specs:
        channel = spec["meta"]["user_channel"]
        assert spec["input_audio"]["channel"] == channel
        sample = _decoded(spec, tokenizer)
        assert sample["audio"].shape[0] == 1
        # 16-bit FLAC of the user's channel, not the mix.
        assert np.abs(sample["audio"][0] - whole[channel]).max() < 1e-3
    batch = collate([_decoded(s, tokenizer) for s in specs])
    assert batch.assistant_activity is not None
    assert batch.assistant_activity.shape == batch.labels.shape
