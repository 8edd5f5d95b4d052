"""Ray Data stages that turn sample specs into shard members: audio, then tokens.

Two stages, so that each runs on the resource it needs:

* `load_audio_batch` (Ray tasks, CPU): decodes each spec's input audio span to 16 kHz FLAC
  (`<key>.flac`) and its target speech span to float32 PCM for the next stage. Recordings are
  decoded once per batch even when many segments of one recording share it.
* `TokenizeStage` (Ray actors; one GPU each when the cluster has GPUs, else CPU): the text side
  through the chat template (`minmo/tokens/text.py`) and the speech side through S3TokenizerV2
  (`minmo/tokens/speech.py`, 25 tokens per second, clips over 30 s windowed), batched; it writes
  each sample's final `.json` (messages, task, durations, token counts, provenance, tokenizers).

A spec whose audio cannot be read or whose tokens come out inconsistent gets an `error` string
instead of members; the shard step quarantines it. Must not: write files, choose shards.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import soundfile as sf

from minmo.audio.encode import flac_bytes
from minmo.io.shards import npy_bytes
from minmo.tokens.speech import SpeechTokenizer, n_speech_tokens
from pipelines.audio_source import RecordingCache, SourceRoots
from pipelines.samples.spec import span_s
from schemas.shards import ALL_MEMBERS
from schemas.units import SAMPLE_RATE_HZ

SPEECH_TOKENS_PER_S = 25
# The members a tokenized sample may have (schemas/shards.py), as result columns: the arrays'
# ".npy" is added back when the sample is written.
MEMBER_COLUMNS = tuple(m.removesuffix(".npy") for m in ALL_MEMBERS)


def load_audio_batch(
    batch: dict[str, np.ndarray],
    storage_options: dict[str, Any] | None = None,
    roots: SourceRoots | None = None,
) -> dict[str, list[Any]]:
    """specs -> {spec, flac (bytes|b""), target_pcm (float32 bytes|b""), error}. `roots`: the
    build's moved sources (specs keep the URIs ingest saw)."""
    cache = RecordingCache(storage_options or {}, roots)
    out: dict[str, list[Any]] = {
        "key": [],
        "shard": [],
        "spec": [],
        "flac": [],
        "target_pcm": [],
        "error": [],
    }
    for key, shard, spec_json in zip(batch["key"], batch["shard"], batch["spec"], strict=True):
        spec = json.loads(spec_json)
        flac = target = b""
        error = ""
        try:
            if spec["input_audio"] is not None:
                flac = flac_bytes(cache.span(spec["input_audio"]))
            if spec["target_speech"] is not None:
                target = cache.span(spec["target_speech"]).mean(axis=0).astype(np.float32).tobytes()
        except Exception as exc:  # noqa: BLE001 - any failure quarantines this sample only
            error = f"{type(exc).__name__}: {exc}"
        out["key"].append(key)
        out["shard"].append(int(shard))
        out["spec"].append(spec_json)
        out["flac"].append(flac)
        out["target_pcm"].append(target)
        out["error"].append(error)
    return out


def tokenizer_info(text_tokenizer: str | None, speech_tokenizer: str | None) -> dict[str, Any]:
    """What each shard's index and each sample's json record about the tokenizers used."""
    info: dict[str, Any] = {
        "text_tokenizer": text_tokenizer or "builtin: byte-level BPE, 2048 merges on demo text",
        "speech_tokenizer": speech_tokenizer,
        "speech_tokenizer_random_init": speech_tokenizer is None,
        "speech_tokens_per_s": SPEECH_TOKENS_PER_S,
    }
    if speech_tokenizer is None:
        info["warning"] = (
            "SPEECH TOKENS FROM A RANDOM-INIT S3TokenizerV2: the codes mean nothing; "
            "pass --speech-tokenizer PATH for a real corpus"
        )
    return info


class TokenizeStage:
    """Text tokens + speech tokens + the final json, one actor per device."""

    def __init__(self, text_tokenizer: str | None, speech_tokenizer: str | None) -> None:
        # Deferred, a heavy dependency: minmo.tokens.text imports transformers (seconds, and
        # hundreds of MB); only these actors need it, not the audio tasks that import this module.
        from minmo.tokens.text import load_text_tokenizer

        self.text = load_text_tokenizer(text_tokenizer)
        self.speech = SpeechTokenizer(speech_tokenizer)
        self.info = tokenizer_info(text_tokenizer, speech_tokenizer)
        self.info["text_vocab_size"] = len(self.text)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        n = len(batch["key"])
        errors = [str(e) for e in batch["error"]]
        specs = [json.loads(s) for s in batch["spec"]]
        clips = {
            i: np.frombuffer(batch["target_pcm"][i], dtype=np.float32).copy()
            for i in range(n)
            if not errors[i] and specs[i]["target_speech"] is not None
        }
        codes: dict[int, np.ndarray] = {}
        if clips:
            order = sorted(clips)
            try:
                codes = dict(
                    zip(order, self.speech.tokenize([clips[i] for i in order]), strict=True)
                )
            except Exception as exc:  # noqa: BLE001 - retry one by one to isolate the bad clip
                for i in order:
                    try:
                        codes[i] = self.speech.tokenize([clips[i]])[0]
                    except Exception as one:  # noqa: BLE001
                        errors[i] = f"speech tokenizer: {type(one).__name__}: {one} (batch: {exc})"
        out: dict[str, list[Any]] = {k: [] for k in ("key", "shard", "error", *MEMBER_COLUMNS)}
        for i, spec in enumerate(specs):
            members: dict[str, bytes] = {}
            if not errors[i]:
                try:
                    members = self._members(spec, batch["flac"][i], codes.get(i), clips.get(i))
                    if i in codes and codes[i].size != n_speech_tokens(clips[i].size):
                        raise ValueError(
                            f"{codes[i].size} speech tokens for {clips[i].size} samples"
                        )
                except Exception as exc:  # noqa: BLE001
                    errors[i] = f"{type(exc).__name__}: {exc}"
                    members = {}
            out["key"].append(batch["key"][i])
            out["shard"].append(int(batch["shard"][i]))
            out["error"].append(errors[i])
            for name in MEMBER_COLUMNS:
                out[name].append(members.get(name, b""))
        return out

    def _members(
        self, spec: dict[str, Any], flac: bytes, codes: np.ndarray | None, clip: np.ndarray | None
    ) -> dict[str, bytes]:
        from minmo.tokens.text import encode_chat  # deferred: transformers (see __init__)

        messages = spec["messages"]
        text_ids = encode_chat(self.text, messages)
        if messages[-1]["role"] == "assistant":
            prompt = encode_chat(self.text, messages[:-1], add_generation_prompt=True)
            target_start = int(prompt.size)
        else:
            target_start = int(text_ids.size)
        input_s = span_s(spec["input_audio"])
        target_s = 0.0 if clip is None else clip.size / SAMPLE_RATE_HZ
        meta = {
            "key": spec["key"],
            "stage": spec["stage"],
            "task": spec["task"],
            "language": spec["language"],
            "messages": messages,
            "duration_s": round(input_s if spec["input_audio"] is not None else target_s, 3),
            "input_duration_s": round(input_s, 3),
            "target_speech_s": round(target_s, 3),
            "sample_rate_hz": SAMPLE_RATE_HZ,
            "input_channels": None,
            "n_text_tokens": int(text_ids.size),
            "target_start": target_start,  # text tokens before this index are the prompt
            "n_speech_tokens": 0 if codes is None else int(codes.size),
            "n_labels": 0 if spec["labels"] is None else len(spec["labels"]),
            "provenance": spec["meta"],
            "tokenizers": self.info,
        }
        members = {"text_tokens": npy_bytes(text_ids)}
        if flac:
            members["flac"] = flac
            meta["input_channels"] = sf.info(io.BytesIO(flac)).channels
        if codes is not None:
            members["speech_tokens"] = npy_bytes(codes.astype(np.int32))
        if spec["labels"] is not None:
            members["labels"] = npy_bytes(np.asarray(spec["labels"], dtype=np.int8))
            meta["label_hop_s"] = spec["meta"].get("label_hop_s")
        if (activity := spec.get("assistant_activity")) is not None:
            members["assistant_activity"] = npy_bytes(np.asarray(activity, dtype=np.int8))
        members["json"] = json.dumps(
            meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        return members
