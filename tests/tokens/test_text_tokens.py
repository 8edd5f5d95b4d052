"""Text tokenizer: offline default, special tokens, ChatML encoding, loading a saved directory."""

from __future__ import annotations

import numpy as np
import pytest

from minmo.tokens import text
from minmo.tokens.text import (
    SPECIAL_TOKENS,
    SPEECH_END,
    SPEECH_PLACEHOLDER,
    SPEECH_START,
    add_special_tokens,
    encode_chat,
    load_text_tokenizer,
)

SAMPLES = {
    "en": "The morning train was late, wasn't it? 42 minutes!",
    "de": "Grüße aus Köln: Die Brötchen sind frisch.",
    "es": "¿Dónde está la estación? Mañana, señor.",
    "fr": "Ça va très bien, merci ; à bientôt.",
    "zh": "你好，世界！明天早上九点见。",
}
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": f"Listen: {SPEECH_PLACEHOLDER} What did I say?"},
    {"role": "assistant", "content": "You asked about the train."},
]


@pytest.fixture(scope="module")
def tok():
    return load_text_tokenizer(None)


def test_default_is_deterministic(tok):
    text._default_tokenizer_json.cache_clear()
    again = load_text_tokenizer(None)
    assert again.get_vocab() == tok.get_vocab()
    assert np.array_equal(encode_chat(again, CHAT), encode_chat(tok, CHAT))
    assert len(tok) > 1000  # a real vocabulary, not the silent empty tokenizer


@pytest.mark.parametrize("lang", sorted(SAMPLES))
def test_round_trips_text(tok, lang):
    ids = tok.encode(SAMPLES[lang], add_special_tokens=False)
    assert tok.decode(ids) == SAMPLES[lang]


def test_special_tokens_are_single_ids(tok):
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    assert tok.unk_token_id is None or tok.unk_token_id not in ids
    for t, i in zip(SPECIAL_TOKENS, ids, strict=True):
        assert tok.encode(t, add_special_tokens=False) == [i]


def test_chat_keeps_speech_markers_and_chatml_structure(tok):
    ids = encode_chat(tok, CHAT)
    assert ids.dtype == np.int32 and ids.ndim == 1
    start, end = tok.convert_tokens_to_ids([SPEECH_START, SPEECH_END])
    (pos,) = np.flatnonzero(ids == start)
    assert ids[pos + 1] == end and np.count_nonzero(ids == end) == 1
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ids[0] == im_start
    assert np.count_nonzero(ids == im_start) == np.count_nonzero(ids == im_end) == 3
    decoded = tok.decode(ids.tolist())
    assert decoded.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert f"<|im_start|>user\nListen: {SPEECH_PLACEHOLDER} What did I say?<|im_end|>\n" in decoded

    prompt = encode_chat(tok, CHAT[:2], add_generation_prompt=True)
    assert tok.decode(prompt.tolist()).endswith("<|im_start|>assistant\n")


def test_saved_directory_loads_with_identical_ids(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = load_text_tokenizer(str(tmp_path))
    assert np.array_equal(encode_chat(loaded, CHAT), encode_chat(tok, CHAT))
    for s in SAMPLES.values():
        assert loaded.encode(s, add_special_tokens=False) == tok.encode(s, add_special_tokens=False)


def test_special_tokens_added_idempotently(tok):
    size = len(tok)
    assert add_special_tokens(tok) == 0
    assert len(tok) == size
    fresh = text._build_default_tokenizer()
    assert add_special_tokens(fresh) == len(SPECIAL_TOKENS)
    assert add_special_tokens(fresh) == 0
    assert fresh.get_vocab() == tok.get_vocab()
