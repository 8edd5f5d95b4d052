"""Tiny random-weight checkpoints laid out like the released ones, for tests and benches.

Owns the builders that write a CosyVoice 2 `llm.pt` and an S3 speech tokenizer checkpoint with
random weights at tiny configs, so the real loaders (`VoiceTokenLM.from_cosyvoice2`,
`SpeechTokenizer`) run on the real layouts without a download. The tiny SenseVoiceSmall
directory is the demo's annotator and lives with it (minmo.demo.annotator). Must not: be
imported by the library (`minmo/` outside `testing/`, and `pipelines/`); tests and benches are
its users.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from minmo.model.voice_lm import VoiceLMConfig
from minmo.tokens.speech import MODEL_NAME, RANDOM_INIT_SEED, config_path_for, model_config

# A 2-layer, width-128 S3TokenizerV2 (rotary embeddings fix 64 dims per head: state / heads = 64).
TINY_CONFIG = {"n_audio_state": 128, "n_audio_head": 2, "n_audio_layer": 2}


def build_tiny_cosyvoice2_llm_pt(
    path: str | Path, config: VoiceLMConfig | None = None, seed: int = 0, text_vocab: int = 300
) -> Path:
    """Write a random `llm.pt` laid out exactly like CosyVoice 2's (for tests).

    Includes the text embedding and the tied text head that `from_cosyvoice2` drops; the text
    vocabulary is shrunk to `text_vocab` rows (CosyVoice 2: 151936) to keep the file small.
    """
    # transformers' Qwen2 classes load slowly; only this builder needs the causal-LM head.
    from transformers import Qwen2ForCausalLM

    config = config or VoiceLMConfig.tiny()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    qwen = Qwen2ForCausalLM(config.qwen2_config(vocab_size=text_vocab, tie_word_embeddings=True))
    state = {f"llm.model.{k}": v.detach().clone() for k, v in qwen.state_dict().items()}
    # Qwen2.5-0.5B ties its head to the embedding; CosyVoice 2's llm.pt stores both keys.
    state.setdefault("llm.model.lm_head.weight", state["llm.model.model.embed_tokens.weight"])
    h, v = config.hidden_size, config.vocab_size
    state["llm_embedding.weight"] = torch.randn(2, h) * 0.02
    state["llm_decoder.weight"] = torch.randn(v, h) * 0.02
    state["llm_decoder.bias"] = torch.randn(v) * 0.02
    state["speech_embedding.weight"] = torch.randn(v, h) * 0.02
    torch.save(state, path)
    return path


def build_tiny_checkpoint(path: str | Path) -> Path:
    """Save a tiny random-init S3TokenizerV2 (2 layers, width 128) that `SpeechTokenizer(path)` loads.

    Writes the state_dict at `path` and its ModelConfig fields at `config_path_for(path)`.
    Rotary embeddings are fixed at 64 dims per head, hence n_audio_state / n_audio_head == 64.
    """
    # s3tokenizer loads only where a tokenizer is built, as in `minmo.tokens.speech`.
    from s3tokenizer.model_v2 import S3TokenizerV2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model_config(TINY_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = S3TokenizerV2(MODEL_NAME, config=config)
    torch.save(model.state_dict(), path)
    full = asdict(config)
    config_path_for(path).write_text(json.dumps({k: full[k] for k in TINY_CONFIG}, indent=2) + "\n")
    return path
