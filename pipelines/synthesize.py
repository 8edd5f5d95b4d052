"""The synthesize step: text dialogues -> spoken dialogues (stage 3) and duplex calls (stage 4).

Owns: reading chat JSONL into the `dialogues` table, choosing voices (user side: drawn, seeded
by dialogue id, from a pool; assistant side: one target voice), the Ray Data actor stage that
speaks every line through a TTS backend (minmo/tts/), writing the audio as FLAC into the build
directory atomically, and the rows that make it corpus material: `recordings` + `segments` for
every synthesised line, `s2s_samples` pairing user audio with the assistant's text and audio,
and, per dialogue, a simulated two-channel duplex conversation (minmo/duplex/simulate.py) with
exact RTTM references, recorded with task `conversation` so diarize and label-turns take it.
Also the paper's second recipe: real transcribed utterances from ingest as user queries, with
replies from a given JSONL of responses (no LLM is called), synthesised in the target voice.

Everything is seeded by dialogue id: reruns write byte-identical audio. Resumable like every
step (pipelines/recording_step.py); a dialogue the TTS cannot speak is quarantined whole.
The audio is named in every table by its build key (`build:audio/...`, pipelines/build.py),
never by an absolute path, so a moved build keeps its ids and its shards' bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from minmo.audio import measure
from minmo.audio.encode import flac_bytes
from minmo.audio.resample import resample
from minmo.audio.trim import trim_silence
from minmo.config import ConfigError, StorageOptions, section_field, storage_options_field
from minmo.duplex.simulate import GapDistribution, SimulationConfig, simulate
from minmo.io.atomic import sweep_temp_files
from minmo.io.fs import Location, to_uri
from minmo.tts.base import Style, TtsFailure, TtsRequest, Voice
from minmo.tts.registry import make_backend
from pipelines.audio_source import SourceRoots, load_audio_16k
from pipelines.build import BuildDir
from pipelines.dialogues import read_dialogues
from pipelines.ray_runtime import ensure_ray, model_actors
from pipelines.recording_step import RecordingStep, StepTotals
from schemas import (
    DIALOGUES,
    QUARANTINE,
    RECORDINGS,
    S2S_SAMPLES,
    SEGMENTS,
    ReasonCode,
    S2SRecipe,
    segment_id,
)
from schemas.quarantine import quarantine_row
from schemas.recordings import recording_id
from schemas.units import SAMPLE_RATE_HZ

STEP = "synthesize"

# espeak-ng voices per language: the user pool (many voices) and the assistant's one voice.
USER_VOICES: dict[str, list[str]] = {
    "en": ["en-us+m3", "en-gb+f2", "en-us+f4", "en-gb+m1", "en-us+m7", "en-gb-x-rp+f3"],
    "de": ["de+m2", "de+f3", "de+m4", "de+f1"],
    "es": ["es+m4", "es-419+f4", "es+f2", "es-419+m1"],
    "fr": ["fr-fr+m5", "fr-be+f1", "fr-fr+m2", "fr-be+f4"],
    "zh": ["cmn-latn-pinyin+m1", "cmn-latn-pinyin+f5", "cmn-latn-pinyin+m3"],
}
ASSISTANT_VOICES: dict[str, str] = {
    "en": "en-us+f5",
    "de": "de+f5",
    "es": "es+f5",
    "fr": "fr-fr+f5",
    "zh": "cmn-latn-pinyin+f2",
}
BACKCHANNELS: dict[str, list[str]] = {
    "en": ["mm-hm", "yeah", "right"],
    "de": ["mhm", "ja", "genau"],
    "es": ["ajá", "sí", "claro"],
    "fr": ["mm", "oui", "d'accord"],
    "zh": ["嗯", "对", "好"],
}


@dataclass
class SynthesizeConfig:
    """The `synthesize:` section of a job spec maps onto this one to one."""

    dialogues: list[str] = field(default_factory=list)
    """Chat JSONL files (ChatML, ShareGPT or Alpaca layouts)."""
    layout: str = "auto"
    """Chat layout of the dialogue files: auto, chatml, sharegpt or alpaca."""
    backend: str = "espeak"
    """espeak, piper or http (see minmo/tts/)."""
    backend_options: dict[str, Any] = field(default_factory=dict)
    """Passed to the backend, e.g. {"base_url": "http://gpu-host:50000", "max_in_flight": 8}."""
    user_voices: dict[str, list[str]] = field(default_factory=dict)
    """Per language, the user voice pool (engine voices); default: USER_VOICES."""
    user_prompts: bool = False
    """Zero-shot user voices: draw each dialogue's user voice from speaker prompts cut from
    transcribed real recordings in the build (for backends that clone a voice, e.g. http with
    CosyVoice); languages without prompts fall back to `user_voices`."""
    max_prompts: int = 64
    """Speaker prompts cut from the build at most (with `user_prompts`)."""
    assistant_voices: dict[str, str] = field(default_factory=dict)
    """Per language, the assistant's target voice; default: ASSISTANT_VOICES."""
    responses: str | None = None
    """JSONL of {"query_text", "response"}: replies for real transcribed utterances (recipe 2);
    a local path or a URI, like `dialogues`."""
    duplex: bool = True
    """Also assemble a simulated two-channel duplex conversation per dialogue."""
    duplex_options: dict[str, Any] = section_field(SimulationConfig)
    """The simulated conversations' timing: SimulationConfig's fields (minmo/duplex/simulate.py:
    gaps, overlap/barge-in/back-channel rates); a gap is a mapping of GapDistribution's fields,
    e.g. {kind: normal, a: 0.6, b: 0.4, min_s: 0}. The seed defaults to the step's."""
    corpus: str = "synthetic"
    """Corpus name of the synthesized recordings."""
    seed: int = 0
    """Seed of the voice draws and the simulated conversations."""
    dialogues_per_unit: int = 16
    """Dialogues per committed unit of work: the granularity of resume."""
    units_per_wave: int = 16
    """Units in flight at once."""
    actors: int | None = None
    """Actor pool size; default one per CPU (or per GPU when GPUs are used)."""
    gpus_per_actor: float | None = None
    """GPUs per actor; default 1 when the Ray cluster has GPUs and the backend runs its model
    here on CUDA (piper with `use_cuda`); espeak and http (a remote server) use none."""
    storage_options: StorageOptions = storage_options_field()

    def __post_init__(self) -> None:
        if isinstance(self.dialogues, str):
            self.dialogues = [self.dialogues]
        if self.dialogues_per_unit < 1 or self.units_per_wave < 1:
            raise ConfigError("dialogues_per_unit and units_per_wave must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def user_pool(self, language: str) -> list[str]:
        pools = self.user_voices or USER_VOICES
        return pools.get(language) or pools.get("en") or next(iter(pools.values()))

    def assistant_voice(self, language: str) -> str:
        voices = self.assistant_voices or ASSISTANT_VOICES
        return voices.get(language) or voices.get("en") or next(iter(voices.values()))


def seeded_rng(key: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{key}|{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def recording_row(
    key: str, audio: np.ndarray, data: bytes, config: SynthesizeConfig, **extra: Any
) -> dict[str, Any]:
    """A recordings row for audio this step wrote (measured like ingest measures). `key` is
    its build key: it is the row's `source_uri` and `source_key`, and the id hashes it."""

    samples = audio if audio.ndim == 2 else audio[None, :]
    sha1 = measure.content_sha1(samples, SAMPLE_RATE_HZ)
    powers = np.concatenate([measure.frame_powers(c, 320) for c in samples])
    loud = powers.max() if powers.size else 0.0
    speech_ratio = float(np.mean(powers > loud * 1e-4)) if loud > 0 else 0.0  # within 40 dB
    return {
        "recording_id": recording_id(key, sha1),
        "source_uri": key,
        "source_key": key,
        "corpus": config.corpus,
        "container": "flac",
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "source_channels": samples.shape[0],
        "channels": samples.shape[0],
        "bits": 16,
        "duration_s": samples.shape[1] / SAMPLE_RATE_HZ,
        "bytes": len(data),
        "content_sha1": sha1,
        "peak_dbfs": measure.peak_dbfs(samples),
        "rms_dbfs": measure.rms_dbfs(samples),
        "clipping_ratio": measure.clipping_ratio(samples),
        "speech_ratio": speech_ratio,
        **extra,
    }


def whole_segment(rec: dict[str, Any]) -> dict[str, Any]:
    """One synthesised line is one supervised segment: its text, voice and language."""
    return {
        "segment_id": segment_id(rec["recording_id"], 0, 0.0, rec["duration_s"]),
        "recording_id": rec["recording_id"],
        "channel": 0,
        "start_s": 0.0,
        "end_s": rec["duration_s"],
        "duration_s": rec["duration_s"],
        "speech_prob": rec["speech_ratio"],
        "origin": "supervision",
        "text": rec["transcript"],
        "speaker": rec["speaker"],
        "language": rec["language"],
    }


def simulation_config(options: dict[str, Any], seed: int) -> Any:
    """SimulationConfig from a job spec's mapping; gap fields may be given as mappings of
    GapDistribution's fields, e.g. {kind: normal, a: 0.6, b: 0.4, min_s: 0}."""
    values = {k: GapDistribution(**v) if isinstance(v, dict) else v for k, v in options.items()}
    values.setdefault("seed", seed)
    return SimulationConfig(**values)


class SynthesizeStage:
    """Ray Data actor: one dialogue (or one real query) per call -> rows of every table."""

    def __init__(
        self,
        config: dict[str, Any],
        build_uri: str,
        prompt_pool: list[dict[str, Any]] | None = None,
    ) -> None:
        import torch

        torch.set_num_threads(1)
        self.config = SynthesizeConfig(**config)
        # Speaker prompts the step cut from the build (uri, text, language) when `user_prompts`
        # is on: runtime state of this run, so it lives here, not in the config.
        self.prompt_pool = prompt_pool or []
        self.build = BuildDir(build_uri, **self.config.storage_options)
        self.backend = make_backend(self.config.backend, **self.config.backend_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"unit": [], "recording_id": [], "result_json": []}
        for unit, key, item_json in zip(
            batch["unit"], batch["recording_id"], batch["item_json"], strict=True
        ):
            item = json.loads(item_json)
            retries_before = getattr(self.backend, "retries_used", 0)
            try:
                result = self.process(item)
            except Exception as exc:  # a bug must not sink the job
                detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
                result = _reject(item, ReasonCode.INTERNAL_ERROR.value, detail)
            retries = getattr(self.backend, "retries_used", 0) - retries_before
            if retries:
                result["stats"]["tts_retries"] = retries
            out["unit"].append(unit)
            out["recording_id"].append(key)
            out["result_json"].append(json.dumps(result))
        return out

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        if item["kind"] == "reject":
            return {"tables": {"quarantine": [item["row"]]}, "stats": {"rejected_rows": 1}}
        if item["kind"] == "asr_query":
            return self._asr_query(item)
        return self._dialogue(item)

    def _speak(self, requests: list[Any]) -> tuple[list[np.ndarray], str | None]:
        """Synthesise and resample to 16 kHz; on any failure, the first failure's detail."""

        results = self.backend.synthesize(requests)
        audio = []
        for request, result in zip(requests, results, strict=True):
            if isinstance(result, TtsFailure):
                return [], f"{request.key}: {result.reason}: {result.detail}"
            mono = np.asarray(result.samples, dtype=np.float32)[None, :]
            audio.append(resample(mono, result.sample_rate_hz)[0])
        return audio, None

    def _write(self, path: str, audio: np.ndarray) -> tuple[str, bytes]:
        """Write DIR/<path> as FLAC; returns its build key and the bytes."""
        data = flac_bytes(audio)
        self.build.write_bytes_atomic(self.build.path(path), data)
        return self.build.key(path), data

    def _dialogue(self, item: dict[str, Any]) -> dict[str, Any]:
        config = self.config
        did = item["recording_id"]
        rows = [r for r in item["turns"] if r["role"] != "system"]
        language = (rows[0].get("language") if rows else None) or "en"
        rng = seeded_rng(did, config.seed)
        prompts = [p for p in self.prompt_pool if p["language"] == language]
        if prompts:
            prompt = prompts[int(rng.integers(len(prompts)))]
            user_voice = Voice(
                f"user:prompt:{prompt['segment_id']}",
                language,
                prompt_wav=prompt["uri"],
                prompt_text=prompt["text"],
            )
        else:
            pool = config.user_pool(language)
            engine_voice = pool[int(rng.integers(len(pool)))]
            user_voice = Voice(f"user:{engine_voice}", language, engine_voice)
        engine = config.assistant_voice(language)
        assistant_voice = Voice(f"assistant:{engine}", language, engine)
        requests = []
        for r in rows:
            style = Style(
                speaking_rate=r.get("speaking_rate"),
                pitch=r.get("pitch"),
                emotion=r.get("emotion"),
                dialect=r.get("dialect"),
                instruction=r.get("style_instruction"),
            )
            voice = user_voice if r["role"] == "user" else assistant_voice
            requests.append(TtsRequest(f"{did}-t{r['turn_index']:03d}", r["text"], voice, style))
        started = time.perf_counter()
        audio, failure = self._speak(requests)
        if failure:
            return _reject(item, ReasonCode.TTS_FAILED.value, failure)
        tables: dict[str, list[dict[str, Any]]] = {
            "dialogues": item["turns"],
            "recordings": [],
            "segments": [],
            "s2s_samples": [],
        }
        stats: dict[str, float] = {"dialogues": 1, "turns": len(rows)}
        uris: list[str] = []
        for r, request, clip in zip(rows, requests, audio, strict=True):
            uri, data = self._write(
                f"audio/synth/{did}/t{r['turn_index']:03d}-{r['role']}.flac", clip
            )
            uris.append(uri)
            rec = recording_row(
                uri,
                clip,
                data,
                config,
                language=language,
                transcript=r["text"],
                speaker=request.voice.voice_id,
                task=f"s2s_{r['role']}",
            )
            tables["recordings"].append(rec)
            tables["segments"].append(whole_segment(rec))
            stats[f"{r['role']}_s"] = stats.get(f"{r['role']}_s", 0.0) + rec["duration_s"]
            stats[f"voice_s:{request.voice.voice_id}"] = (
                stats.get(f"voice_s:{request.voice.voice_id}", 0.0) + rec["duration_s"]
            )
        for i, r in enumerate(rows):
            if r["role"] != "assistant" or i == 0 or rows[i - 1]["role"] != "user":
                continue
            user = rows[i - 1]
            history = [
                {"role": h["role"], "content": h["text"]}
                for h in item["turns"][: user["turn_index"]]
            ]
            tables["s2s_samples"].append(
                {
                    "sample_id": f"{did}-t{r['turn_index']:03d}",
                    "dialogue_id": did,
                    "turn_index": r["turn_index"],
                    "recipe": S2SRecipe.TTS_DIALOGUE.value,
                    "language": language,
                    "history_json": json.dumps(history, ensure_ascii=False),
                    "user_text": user["text"],
                    "user_audio_uri": uris[i - 1],
                    "user_audio_key": uris[i - 1],  # a build key already
                    "user_start_s": 0.0,
                    "user_end_s": len(audio[i - 1]) / SAMPLE_RATE_HZ,
                    "user_voice": user_voice.voice_id,
                    "assistant_text": r["text"],
                    "assistant_audio_uri": uris[i],
                    "assistant_duration_s": len(audio[i]) / SAMPLE_RATE_HZ,
                    "assistant_voice": assistant_voice.voice_id,
                    "style_instruction": r.get("style_instruction"),
                }
            )
        stats["s2s_samples"] = len(tables["s2s_samples"])
        if config.duplex and {r["role"] for r in rows} == {"user", "assistant"}:
            self._duplex(did, rows, audio, user_voice, language, tables, stats)
        stats["audio_s"] = sum(len(a) for a in audio) / SAMPLE_RATE_HZ
        stats["compute_s"] = time.perf_counter() - started
        return {"tables": tables, "stats": stats}

    def _duplex(
        self,
        did: str,
        rows: list[dict[str, Any]],
        audio: list[np.ndarray],
        user_voice: Any,
        language: str,
        tables: dict[str, list[dict[str, Any]]],
        stats: dict[str, float],
    ) -> None:
        """Assemble the dialogue as a two-channel call (user = channel 0) with exact RTTM.

        Clips are trimmed to their speech first, so the reference boundaries (and the drawn
        gaps between them) sit where speech is, not where the synthesiser's padding ends."""

        words = BACKCHANNELS.get(language, BACKCHANNELS["en"])
        requests = [TtsRequest(f"{did}-bc{i}", w, user_voice) for i, w in enumerate(words)]
        clips, failure = self._speak(requests)
        pool = []
        for clip in [] if failure else clips:
            try:
                trimmed = trim_silence(clip, SAMPLE_RATE_HZ)
            except ValueError:
                continue
            if len(trimmed) <= SAMPLE_RATE_HZ:  # longer than 1 s is a turn, not a back-channel
                pool.append(trimmed)
        sim = simulate(
            [
                (r["role"], trim_silence(a, SAMPLE_RATE_HZ))
                for r, a in zip(rows, audio, strict=True)
            ],
            {"user": pool},
            did,
            simulation_config(self.config.duplex_options, self.config.seed),
        )
        uri, data = self._write(f"audio/duplex/{did}.flac", sim.audio)
        self.build.write_bytes_atomic(
            self.build.path(f"audio/duplex/{did}.rttm"), sim.rttm(did).encode()
        )
        tables["recordings"].append(
            recording_row(uri, sim.audio, data, self.config, language=language, task="conversation")
        )
        stats["duplex_conversations"] = 1
        stats["duplex_s"] = sim.audio.shape[1] / SAMPLE_RATE_HZ

    def _asr_query(self, item: dict[str, Any]) -> dict[str, Any]:
        language = item.get("language") or "en"
        engine = self.config.assistant_voice(language)
        voice = Voice(f"assistant:{engine}", language, engine)
        started = time.perf_counter()
        audio, failure = self._speak([TtsRequest(item["recording_id"], item["response"], voice)])
        if failure:
            return _reject(item, ReasonCode.TTS_FAILED.value, failure)
        uri, data = self._write(f"audio/replies/{item['recording_id']}.flac", audio[0])
        rec = recording_row(
            uri,
            audio[0],
            data,
            self.config,
            language=language,
            transcript=item["response"],
            speaker=voice.voice_id,
            task="s2s_assistant",
        )
        tables = {"recordings": [rec], "segments": [whole_segment(rec)]}
        sample = {
            "sample_id": item["recording_id"],
            "dialogue_id": item["recording_id"],
            "turn_index": 1,
            "recipe": S2SRecipe.ASR_QUERY.value,
            "language": language,
            "history_json": "[]",
            "user_text": item["query_text"],
            "user_audio_uri": item["source_uri"],
            "user_audio_key": item["source_key"],
            "user_start_s": item["start_s"],
            "user_end_s": item["end_s"],
            "user_voice": item.get("speaker"),
            "assistant_text": item["response"],
            "assistant_audio_uri": uri,
            "assistant_duration_s": rec["duration_s"],
            "assistant_voice": voice.voice_id,
            "style_instruction": None,
        }
        stats = {
            "asr_queries": 1,
            "assistant_s": rec["duration_s"],
            f"voice_s:{voice.voice_id}": rec["duration_s"],
            "audio_s": rec["duration_s"],
            "compute_s": time.perf_counter() - started,
            "s2s_samples": 1,
        }
        return {"tables": tables | {"s2s_samples": [sample]}, "stats": stats}


def _reject(item: dict[str, Any], reason: str, detail: str) -> dict[str, Any]:
    row = quarantine_row(item.get("source_uri", ""), reason, detail, step=STEP)
    row["item_key"] = item["recording_id"]
    return {"tables": {"quarantine": [row]}, "stats": {}}


def speaker_prompts(build: BuildDir, config: SynthesizeConfig) -> list[dict[str, Any]]:
    """Speaker prompts for zero-shot voices: transcribed segments of 3-12 s from the build, cut
    to 16 kHz WAV files under DIR/audio/prompts/ (written once, atomically), in id order."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import soundfile as sf

    files = build.files(build.table_dir("segments"), ".parquet")
    if not files:
        return []
    duration = pc.field("duration_s")
    segments = (
        pads.dataset(files, filesystem=build.fs, format="parquet")
        .to_table(
            filter=pc.field("text").is_valid() & (duration >= 3.0) & (duration <= 12.0),
            columns=[
                "segment_id",
                "recording_id",
                "channel",
                "start_s",
                "end_s",
                "text",
                "language",
            ],
        )
        .sort_by("segment_id")
        .slice(0, config.max_prompts)
        .to_pylist()
    )
    recordings = pads.dataset(
        build.files(build.table_dir("recordings"), ".parquet"), filesystem=build.fs
    ).to_table(columns=["recording_id", "source_uri", "channels"])
    info = {r["recording_id"]: r for r in recordings.to_pylist()}
    roots = SourceRoots.load(build)
    pool = []
    for s in segments:
        path = build.path("audio", "prompts", f"{s['segment_id']}.wav")
        if not build.exists(path):
            rec = info[s["recording_id"]]
            audio = load_audio_16k(
                rec["source_uri"], rec["channels"], config.storage_options, roots
            )
            clip = audio[
                s["channel"], int(s["start_s"] * SAMPLE_RATE_HZ) : int(s["end_s"] * SAMPLE_RATE_HZ)
            ]
            out = io.BytesIO()
            sf.write(out, clip, SAMPLE_RATE_HZ, format="WAV", subtype="PCM_16")
            build.write_bytes_atomic(path, out.getvalue())
        language = s["language"] or "en"
        pool.append(
            {
                "segment_id": s["segment_id"],
                "uri": to_uri(build.fs, path),
                "text": s["text"],
                "language": language,
            }
        )
    return pool


def dialogue_items(config: SynthesizeConfig) -> list[dict[str, Any]]:
    """Work items: each parsed dialogue, and each unparseable row (echoed into quarantine)."""

    items: dict[str, dict[str, Any]] = {}
    for path in config.dialogues:
        for kind, payload in read_dialogues(path, config.layout, config.storage_options):
            if kind == "dialogue":
                did = payload[0]["dialogue_id"]
                items.setdefault(did, {"recording_id": did, "kind": "dialogue", "turns": payload})
            else:
                key = hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
                rid = f"reject-{key}"
                items.setdefault(rid, {"recording_id": rid, "kind": "reject", "row": payload})
    return sorted(items.values(), key=lambda i: i["recording_id"])


def query_items(build: BuildDir, config: SynthesizeConfig) -> list[dict[str, Any]]:
    """Recipe 2: transcribed segments whose text is a query in the responses file."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    if not config.responses:
        return []
    responses: dict[str, str] = {}
    for line in Location.from_uri(config.responses, **config.storage_options).iter_lines():
        if line.strip():
            row = json.loads(line)
            responses.setdefault(row["query_text"].strip(), row["response"])
    segment_files = build.files(build.table_dir("segments"), ".parquet")
    if not segment_files or not responses:
        return []
    segments = pads.dataset(segment_files, filesystem=build.fs, format="parquet").to_table(
        columns=["segment_id", "recording_id", "start_s", "end_s", "text", "speaker", "language"],
        filter=pc.field("text").isin(list(responses)),
    )
    recordings = pads.dataset(
        build.files(build.table_dir("recordings"), ".parquet"), filesystem=build.fs
    ).to_table(
        columns=["recording_id", "source_uri", "source_key"],
        filter=pc.field("recording_id").isin(segments.column("recording_id").unique()),
    )
    info = {r["recording_id"]: r for r in recordings.to_pylist()}
    items = []
    for s in segments.to_pylist():
        items.append(
            {
                "recording_id": f"query-{s['segment_id']}",
                "kind": "asr_query",
                "source_uri": info[s["recording_id"]]["source_uri"],
                # relocatable: s2s provenance names the real query by it, never by its path
                "source_key": info[s["recording_id"]]["source_key"]
                or info[s["recording_id"]]["source_uri"],
                "start_s": s["start_s"],
                "end_s": s["end_s"],
                "query_text": s["text"],
                "response": responses[s["text"].strip()],
                "speaker": s["speaker"],
                "language": s["language"],
            }
        )
    return sorted(items, key=lambda i: i["recording_id"])


@dataclass
class SynthesizeSummary:
    items_run: int
    wall_s: float
    totals: StepTotals

    def to_dict(self) -> dict[str, Any]:
        t = self.totals.stats
        voices = {
            k.split(":", 1)[1]: round(v / 3600, 4) for k, v in t.items() if k.startswith("voice_s:")
        }
        audio_s, compute_s = t.get("audio_s", 0.0), t.get("compute_s", 0.0)
        return {
            "items_run": self.items_run,
            "wall_s": self.wall_s,
            "dialogues": int(t.get("dialogues", 0)),
            "turns": int(t.get("turns", 0)),
            "asr_queries": int(t.get("asr_queries", 0)),
            "s2s_samples": int(t.get("s2s_samples", 0)),
            "duplex_conversations": int(t.get("duplex_conversations", 0)),
            "tts_retries": int(t.get("tts_retries", 0)),
            "hours_per_role": {
                "user": t.get("user_s", 0.0) / 3600,
                "assistant": t.get("assistant_s", 0.0) / 3600,
                "duplex": t.get("duplex_s", 0.0) / 3600,
            },
            "hours_per_voice": voices,
            "audio_s_per_compute_s": audio_s / compute_s if compute_s else 0.0,
            "quarantined": dict(self.totals.quarantined),
        }

    def render(self) -> str:
        d = self.to_dict()
        roles = ", ".join(f"{k} {v:.4f} h" for k, v in d["hours_per_role"].items())
        voices = ", ".join(f"{k} {v * 3600:.0f} s" for k, v in sorted(d["hours_per_voice"].items()))
        return "\n".join(
            [
                f"synthesize: {self.items_run} item(s) this run in {self.wall_s:.1f} s",
                f"  build: {d['dialogues']} dialogues, {d['turns']} turns, {d['asr_queries']} real "
                f"queries answered -> {d['s2s_samples']} speech-to-speech samples, "
                f"{d['duplex_conversations']} duplex conversations",
                f"  hours per role: {roles}",
                f"  per voice: {voices}",
                f"  TTS speed: {d['audio_s_per_compute_s']:.1f} audio s per compute s per actor; "
                f"{d['tts_retries']} request retries",
                f"  quarantined: {sum(d['quarantined'].values())}"
                + "".join(f"\n    {r}: {n}" for r, n in sorted(d["quarantined"].items())),
            ]
        )


def run_synthesize(
    build_uri: str, config: SynthesizeConfig, progress: bool = True
) -> SynthesizeSummary:
    """Synthesise every pending dialogue and real query into the build; resumable, idempotent."""
    import ray

    build = BuildDir(build_uri, **config.storage_options)
    step = RecordingStep(
        build,
        STEP,
        {
            "dialogues": DIALOGUES,
            "recordings": RECORDINGS,
            "segments": SEGMENTS,
            "s2s_samples": S2S_SAMPLES,
            "quarantine": QUARANTINE,
        },
        config.dialogues_per_unit,
        config.units_per_wave,
    )
    # The audio this step writes lives outside its ledger's folders: sweep it here.
    sweep_temp_files(build.fs, build.path("audio"), recursive=True)
    prompt_pool = speaker_prompts(build, config) if config.user_prompts else []
    done = step.covered()
    pending = [
        i
        for i in dialogue_items(config) + query_items(build, config)
        if i["recording_id"] not in done
    ]
    items_run, wall_s = 0, 0.0
    if pending:
        ensure_ray(progress=progress)
        build_root = to_uri(build.fs, build.root)

        def stage(ds: Any) -> Any:
            uses_gpu = bool(config.backend_options.get("use_cuda"))
            actors, gpus = model_actors(uses_gpu, config.gpus_per_actor, config.actors)
            return ds.map_batches(
                SynthesizeStage,
                # The build as a canonical URI (an absolute path when local): a relative
                # path would mean another folder on a worker started elsewhere.
                fn_constructor_kwargs={
                    "config": config.to_dict(),
                    "build_uri": build_root,
                    "prompt_pool": prompt_pool,
                },
                batch_size=1,
                num_cpus=1,
                num_gpus=gpus,
                compute=ray.data.ActorPoolStrategy(size=min(actors, len(pending))),
            )

        counts = step.run(pending, stage, progress, len(pending))
        items_run, wall_s = counts.recordings_run, counts.wall_s
    summary = SynthesizeSummary(items_run, wall_s, step.totals())
    build.write_json_atomic(build.path("_state", STEP, "summary.json"), summary.to_dict())
    return summary
