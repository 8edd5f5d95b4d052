"""SenseVoiceSmall as a labeller: 16 kHz clips -> transcript, language, emotion, audio events,
each with the model's confidence, in one forward pass per batch.

Owns: checking a local model directory (never a download: funasr's `AutoModel` fetches from a
hub when its `model` is not an existing directory, so a missing or incomplete directory is an
error here, before funasr sees it), the model's version digest, loading through `AutoModel`,
and reading confidences out of the CTC output. Must not: read audio files or tables
(pipelines/annotate.py does), or re-implement the model's forward pass.

Why hooks: funasr's `SenseVoiceSmall.inference` returns only the decoded string. Its own pass is
kept as the one source of the text (queries, padding, greedy CTC, tokenizer); forward hooks on
the encoder (valid lengths) and on the CTC projection (logits) capture what that same pass
computed, and `ctc_confidences` turns it into a probability per emitted token: the mean over
the frames of a token's CTC run of the softmax probability of that token. A tag's confidence is
that of its token (the language / emotion / event tags are emitted at the model's query
frames); the transcript's is the mean over its tokens; the events' is the lowest of the kept
event tags'. Dimensions: B clips, T encoder frames (60 ms, 4 query frames first), V vocabulary.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minmo.annotate.rich_tags import ALL_TAGS, parse_rich, tag_piece
from minmo.io.trees import FETCHED_MARKER

MODEL_NAME = "SenseVoiceSmall"
"""The `model` column of the rows this labeller gives (schemas/annotations.py)."""
BLANK_ID = 0  # SenseVoiceSmall's CTC blank (its `blank_id`)


class ModelDirError(FileNotFoundError):
    """A model directory that cannot be loaded without a download; the message names the fix."""


def tokenizer_file(model_dir: Path) -> Path | None:
    """The SentencePiece file funasr will use: configuration.json's `tokenizer_conf.bpemodel`
    (the released layout), else `bpe.model` (funasr's other local layout)."""
    conf = model_dir / "configuration.json"
    if conf.is_file():
        metas = json.loads(conf.read_text(encoding="utf-8")).get("file_path_metas", {})
        name = metas.get("tokenizer_conf", {}).get("bpemodel")
        if name:
            return model_dir / name
    return model_dir / "bpe.model" if (model_dir / "bpe.model").is_file() else None


def check_model_dir(model_dir: str | Path) -> Path:
    """The directory, when it holds everything `AutoModel` reads; else ModelDirError."""
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise ModelDirError(
            f"SenseVoice model directory not found: {path} (download SenseVoiceSmall once, "
            "e.g. `modelscope download iic/SenseVoiceSmall --local_dir DIR`, and pass DIR; "
            "minmo never downloads)"
        )
    missing = [n for n in ("config.yaml", "model.pt", "am.mvn") if not (path / n).is_file()]
    bpe = tokenizer_file(path)
    if bpe is None or not bpe.is_file():
        missing.append(bpe.name if bpe is not None else "the tokenizer (*.bpe.model)")
    if missing:
        raise ModelDirError(
            f"{path} is not a complete SenseVoiceSmall directory: missing {', '.join(missing)}"
        )
    return path


def model_version(model_dir: str | Path, chunk: int = 1 << 22) -> str:
    """A digest of every file of the directory (names and bytes): labels of a changed model
    are told apart from the old ones. Reads the files once (~1 GB for the real model)."""
    root = check_model_dir(model_dir)
    digest = hashlib.sha256()
    # A cached copy of a store's directory (minmo.io.trees.local_dir) digests like the original.
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != FETCHED_MARKER)
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ClipLabels:
    """What the model says about one clip (None: no label; confidences in [0, 1])."""

    raw_text: str
    transcript: str
    transcript_confidence: float | None
    language: str | None
    language_confidence: float | None
    emotion: str | None
    emotion_confidence: float | None
    audio_events: list[str] | None
    audio_events_confidence: float | None
    unknown_tags: tuple[str, ...] = ()


def ctc_confidences(log_probs: torch.Tensor) -> list[tuple[int, float]]:
    """Greedy CTC over (T, V) log-probabilities -> (token id, confidence) per emitted token.

    The path is funasr's (argmax per frame, repeats merged, blanks removed); a token's
    confidence is the mean softmax probability of that token over the frames of its run."""
    probs, ids = log_probs.float().exp().max(dim=-1)
    out: list[tuple[int, float]] = []
    start = 0
    ids_list = ids.tolist()
    for t in range(1, len(ids_list) + 1):
        if t == len(ids_list) or ids_list[t] != ids_list[start]:
            if ids_list[start] != BLANK_ID:
                out.append((ids_list[start], float(probs[start:t].mean())))
            start = t
    return out


def labels_of(text: str, tokens: list[tuple[int, float]], tag_ids: dict[int, str]) -> ClipLabels:
    """One clip's labels: `text` parsed (rich_tags), confidences from its emitted `tokens`."""
    rich = parse_rich(text)
    tag_conf: dict[str, float] = {}
    word_conf: list[float] = []
    for token, conf in tokens:
        if token in tag_ids:
            tag_conf.setdefault(tag_ids[token], conf)
        else:
            word_conf.append(conf)
    language = rich.language
    emotion = rich.emotion
    events = rich.audio_events
    event_conf = [tag_conf[t] for t, _ in rich.event_labels if t in tag_conf]
    return ClipLabels(
        raw_text=text,
        transcript=rich.transcript,
        transcript_confidence=float(np.mean(word_conf)) if rich.transcript and word_conf else None,
        language=language,
        language_confidence=tag_conf.get(rich.language_tag or "") if language else None,
        emotion=emotion,
        emotion_confidence=tag_conf.get(rich.emotion_tag or "") if emotion else None,
        audio_events=events,
        audio_events_confidence=min(event_conf) if events and event_conf else None,
        unknown_tags=rich.unknown_tags,
    )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """funasr prints its version and logs every loading step at INFO on the root logger (its
    `log_level` applies only afterwards): a dozen lines per actor that say nothing a user
    needs (and a warning that remote code is not trusted, which is what minmo wants).
    Failures still raise; errors still show."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


class SenseVoiceLabeler:
    """A SenseVoiceSmall loaded once (funasr `AutoModel`), labelling batches of clips."""

    def __init__(self, model_dir: str | Path, device: str | None = None, threads: int = 1) -> None:
        # funasr is heavy (seconds to import) and only a labeller needs it.
        from funasr import AutoModel

        path = check_model_dir(model_dir)
        self.device = device or default_device()
        with _quiet_loading():
            auto = AutoModel(
                model=str(path),
                disable_update=True,  # no version check over the network
                device=self.device,
                ncpu=threads,
                log_level="ERROR",
                disable_pbar=True,
                ignore_init_mismatch=False,  # a tokenizer / head mismatch is an error
            )
        self.model = auto.model
        self.tokenizer = auto.kwargs["tokenizer"]
        self.frontend = auto.kwargs["frontend"]
        self.device = auto.kwargs["device"]  # funasr falls back to cpu without the device
        sp = self.tokenizer.sp
        unk = sp.unk_id()
        self.tag_ids = {
            i: name for name in ALL_TAGS if (i := sp.piece_to_id(tag_piece(name))) != unk
        }
        self._captured: dict[str, Any] = {}
        self.model.encoder.register_forward_hook(self._keep("encoder"))
        self.model.ctc.ctc_lo.register_forward_hook(self._keep("logits"))

    def _keep(self, name: str) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            self._captured[name] = output

        return hook

    @torch.inference_mode()
    def label(self, clips: list[np.ndarray]) -> list[ClipLabels]:
        """Mono float32 16 kHz clips -> their labels, in order, in one batched pass."""
        if not clips:
            return []
        self._captured.clear()
        results, _ = self.model.inference(
            [torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32)) for c in clips],
            key=[str(i) for i in range(len(clips))],
            tokenizer=self.tokenizer,
            frontend=self.frontend,
            device=self.device,
            language="auto",
            use_itn=False,
        )
        _, lengths = self._captured["encoder"][:2]
        log_probs = torch.log_softmax(self._captured["logits"].float(), dim=-1)
        out = []
        for i, result in enumerate(results):
            tokens = ctc_confidences(log_probs[i, : int(lengths[i])])
            out.append(labels_of(result["text"], tokens, self.tag_ids))
        return out
