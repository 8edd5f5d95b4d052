"""The demo's pseudo-labeller: a tiny random-init SenseVoiceSmall directory for `annotate`.

Owns where the demo keeps it (`OUT/models/sensevoice-tiny/`, local or on a store), writing it
once, and the builder of that directory (`build_tiny_sensevoice_dir`, which tests and benches use
too). The directory has the released layout, so the demo's `annotate` step runs the same funasr
`AutoModel` code a real SenseVoiceSmall directory runs; its weights are random, so its labels
are noise and the demo's `label_source` / filters use them only where that is harmless.
Must not: download anything.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
import yaml

from minmo.annotate.rich_tags import ALL_TAGS, tag_piece
from minmo.io.fs import open_filesystem, to_uri, uri_scheme
from minmo.io.trees import upload_tree
from minmo.model.voice_encoder import VoiceEncoderConfig

SENSEVOICE_VOCAB = 25055
"""SenseVoiceSmall's token count: its CTC head's rows and its SentencePiece model's pieces."""
SENSEVOICE_BPE_FILE = "chn_jpn_yue_eng_ko_spectok.bpe.model"
"""The tokenizer's file name in the released directory (configuration.json names it)."""
# Text the tiny tokenizer learns its pieces from: the five languages SenseVoice tags.
_TOKENIZER_TEXT = (
    "and so my fellow americans ask not what your country can do for you",
    "the quick brown fox jumps over the lazy dog while the birds sing",
    "你好 世界 今天 天气 很好 我们 一起 去 公园",
    "今日は いい 天気 です ね",
    "안녕하세요 오늘 날씨가 좋네요",
    "你今日食咗飯未呀",
)

ANNOTATOR_DIR = "models/sensevoice-tiny"
_DONE = "configuration.json"  # written last by the builder: present means the directory is whole


def write_demo_annotator(out: str, storage_options: dict[str, Any] | None = None) -> str:
    """Write the tiny SenseVoiceSmall under `out` unless it is already there; returns its path
    or URI. On a store it is built in a temporary directory and uploaded, configuration.json
    last (annotate copies it back to each node's cache: funasr loads local directories only)."""
    if uri_scheme(out) in (None, "file"):
        path = Path(out.removeprefix("file://")) / ANNOTATOR_DIR
        if not (path / _DONE).is_file():
            build_tiny_sensevoice_dir(path)
        return str(path)
    fs, root = open_filesystem(out, **(storage_options or {}))
    remote = f"{root.rstrip('/')}/{ANNOTATOR_DIR}"
    if fs.get_file_info(f"{remote}/{_DONE}").type != pafs.FileType.File:
        with tempfile.TemporaryDirectory(prefix="minmo-demo-annotator-") as tmp:
            upload_tree(build_tiny_sensevoice_dir(Path(tmp)), fs, remote, last=_DONE)
    return to_uri(fs, remote)


def build_tiny_sensevoice_dir(
    path: str | Path, config: VoiceEncoderConfig | None = None, seed: int = 0
) -> Path:
    """Write a SenseVoiceSmall-shaped model directory with random weights (for tests).

    Layout as the released download: ``config.yaml`` (model SenseVoiceSmall, encoder
    SenseVoiceEncoderSmall at ``config``'s dims, WavFrontend, tokenizer conf), ``model.pt`` (the
    FULL SenseVoiceSmall state dict, CTC head over 25,055 tokens and task-query embeddings
    included, built by funasr's own class), ``am.mvn`` (Kaldi nnet-text CMVN of size D),
    ``configuration.json`` (funasr's file map, as released) and the SentencePiece tokenizer
    (``build_sensevoice_tokenizer``: 25,055 pieces, the rich tags among them), so that
    funasr's ``AutoModel`` loads the directory and decodes with it exactly as a real one.
    """
    # funasr is the heavy optional dependency of the real encoder; only this builder needs it.
    from funasr.models.sense_voice.model import SenseVoiceSmall

    config = config or VoiceEncoderConfig.tiny()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    encoder_conf = {
        **config.encoder_conf(),
        "positional_dropout_rate": config.dropout_rate,
        "input_layer": "pe",
        "pos_enc_class": "SinusoidalPositionEncoder",
        "normalize_before": True,
        "selfattention_layer_type": "sanm",
    }
    ctc_conf = {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True, "ignore_nan_grad": True}
    conf = {
        "model": "SenseVoiceSmall",
        "model_conf": {
            "length_normalized_loss": True,
            "sos": 1,
            "eos": 2,
            "ignore_id": -1,
        },
        "encoder": "SenseVoiceEncoderSmall",
        "encoder_conf": encoder_conf,
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {
            "bpemodel": SENSEVOICE_BPE_FILE,
            "unk_symbol": "<unk>",
            "split_with_space": True,
        },
        "frontend": "WavFrontend",
        "frontend_conf": {
            "fs": config.sample_rate,
            "window": config.window,
            "n_mels": config.n_mels,
            "frame_length": config.frame_length_ms,
            "frame_shift": config.frame_shift_ms,
            "lfr_m": config.lfr_m,
            "lfr_n": config.lfr_n,
        },
        "ctc_conf": ctc_conf,
        "normalize": None,
    }
    (path / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False), encoding="utf-8")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SenseVoiceSmall(
            encoder="SenseVoiceEncoderSmall",
            encoder_conf=encoder_conf,
            ctc_conf=ctc_conf,
            input_size=config.input_size,
            vocab_size=SENSEVOICE_VOCAB,
            **conf["model_conf"],
        )
    torch.save(model.state_dict(), path / "model.pt")

    # Plausible global CMVN: log-mel means around -10 (shift = -mean), 1/std around 0.3,
    # repeated over the lfr_m stacked copies as in the released am.mvn.
    rng = np.random.default_rng(seed)
    shift = np.tile(-(10.0 + rng.normal(0.0, 1.5, config.n_mels)), config.lfr_m)
    scale = np.tile(0.3 + 0.1 * rng.random(config.n_mels), config.lfr_m)
    dim = config.input_size

    def row(values: np.ndarray) -> str:
        return "<LearnRateCoef> 0 [ " + " ".join(f"{v:.6f}" for v in values) + " ]"

    lines = [
        "<Nnet>",
        f"<Splice> {dim} {dim}",
        "[ 0 ]",
        f"<AddShift> {dim} {dim}",
        row(shift),
        f"<Rescale> {dim} {dim}",
        row(scale),
        "</Nnet>",
    ]
    (path / "am.mvn").write_text("\n".join(lines) + "\n", encoding="utf-8")
    build_sensevoice_tokenizer(path / SENSEVOICE_BPE_FILE)
    configuration = {
        "framework": "pytorch",
        "task": "auto-speech-recognition",
        "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "model_name_in_hub": {"ms": "", "hf": ""},
        "file_path_metas": {
            "init_param": "model.pt",
            "config": "config.yaml",
            "tokenizer_conf": {"bpemodel": SENSEVOICE_BPE_FILE},
            "frontend_conf": {"cmvn_file": "am.mvn"},
        },
    }
    (path / "configuration.json").write_text(json.dumps(configuration, indent=2) + "\n")
    return path


def build_sensevoice_tokenizer(path: str | Path, vocab_size: int = SENSEVOICE_VOCAB) -> Path:
    """Write a SentencePiece model with `vocab_size` pieces that decodes like SenseVoice's.

    A tiny unigram model is trained on a few lines of the five languages (milliseconds), then
    padded with never-chosen filler pieces to the CTC head's size (funasr sizes the head from
    the tokenizer), and every rich tag (`minmo.annotate.rich_tags.ALL_TAGS`) is added as one
    user-defined piece `<|name|>` at the end, so a decoded id sequence reads
    `<|en|><|NEUTRAL|>...` as the released tokenizer's does. Deterministic: one thread.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as spm_pb

    path = Path(path)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_TOKENIZER_TEXT * 8),
        model_writer=buffer,
        vocab_size=200,
        model_type="unigram",
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    model = spm_pb.ModelProto()
    model.ParseFromString(buffer.getvalue())
    tags = [tag_piece(t) for t in ALL_TAGS]
    fillers = vocab_size - len(model.pieces) - len(tags)
    if fillers < 0:
        raise ValueError(f"vocab_size {vocab_size} cannot hold {len(model.pieces) + len(tags)}")
    for i in range(fillers):
        piece = model.pieces.add()
        piece.piece = f"\u2581f{i}"  # "▁f12": a word no text produces (score far below all)
        piece.score = -1000.0
        piece.type = spm_pb.ModelProto.SentencePiece.NORMAL
    for tag in tags:
        piece = model.pieces.add()
        piece.piece = tag
        piece.score = 0.0
        piece.type = spm_pb.ModelProto.SentencePiece.USER_DEFINED
    model.trainer_spec.vocab_size = vocab_size
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
