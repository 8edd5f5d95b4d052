"""Text tokenizer for the shard step: load one, add MinMo's special tokens, encode a chat.

Owns the text side of tokenization only: which special tokens MinMo adds, how a tokenizer is
loaded (any Hugging Face tokenizer directory, offline), and how a list of chat messages becomes
int32 ids through the tokenizer's chat template. It must not touch audio or speech tokens: the
audio that belongs between `<|startofspeech|>` and `<|endofspeech|>` is spliced in at training
time, and speech codes come from the speech tokenizer.

Production loads Qwen2.5-7B-Instruct's tokenizer directory. `load_text_tokenizer(None)` gives an
offline stand-in for tests and the demo: a small byte-level BPE (Qwen's pre-tokenizer regex,
ChatML template) trained in memory on the demo corpus text. Byte-level means every UTF-8 string
round-trips; ids are deterministic but unrelated to Qwen's.
"""

from __future__ import annotations

import functools

import numpy as np
from transformers import (
    AutoTokenizer,
    BatchEncoding,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

# The built-in stand-in tokenizer is trained on the demo corpus's text, so the demo's ids are
# dense; `minmo.demo.script` is pure data (it imports nothing of ours), so no cycle.
from minmo.demo.script import BACKCHANNELS, CONVERSATIONS, SENTENCES

SPEECH_START = "<|startofspeech|>"  # input side: the user's audio embeddings start here
SPEECH_END = "<|endofspeech|>"  # input side: ... and end here
SPEECH_FILL = "<|speech_fill|>"  # voice decoder: filling token when text runs ahead of speech
TURN_OF_SPEECH = "<|turn_of_speech|>"  # voice decoder: the assistant's spoken turn begins
SPEECH_GEN_END = "<|endofspeech_gen|>"  # voice decoder: end of the generated speech tokens

# MinMo's special tokens, added to whatever tokenizer is loaded (DESIGN.md §1: audio markers on
# the input side; a filling, a turn-of-speech and an end-of-speech token for the voice decoder).
SPECIAL_TOKENS: tuple[str, ...] = (
    SPEECH_START,
    SPEECH_END,
    SPEECH_FILL,
    TURN_OF_SPEECH,
    SPEECH_GEN_END,
)

# What a chat message holds where the user's audio goes; each marker must stay one id.
SPEECH_PLACEHOLDER = SPEECH_START + SPEECH_END


def user_with_audio(instruction: str) -> str:
    """A user turn: task instruction, then the audio markers (DESIGN.md §1 sample format); the
    sample builders and the inference paths (minmo chat) lay it out alike."""
    return f"{instruction}\n{SPEECH_PLACEHOLDER}" if instruction else SPEECH_PLACEHOLDER


CHATML_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Qwen2's ChatML layout, without its tool-calling and default-system-prompt branches.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen2's pre-tokenizer split (numbers one digit at a time, punctuation runs, whitespace).
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEFAULT_VOCAB_SIZE = 2048
# A byte-level BPE has 256 byte symbols before any merge; fewer means an empty/broken tokenizer
# (transformers 5's `Qwen2Tokenizer(vocab_file=..., merges_file=...)` builds one silently).
_MIN_VOCAB = 256 + len(CHATML_TOKENS) + len(SPECIAL_TOKENS)


def load_text_tokenizer(path: str | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer directory offline (or the built-in default) with MinMo's special tokens.

    path: any Hugging Face tokenizer directory, e.g. Qwen2.5-7B-Instruct's; None builds the
    embedded default (byte-level BPE on the demo text, ChatML template), the same ids every run.
    """
    tokenizer: PreTrainedTokenizerBase
    if path is None:
        tokenizer = _build_default_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    add_special_tokens(tokenizer)
    if len(tokenizer) < _MIN_VOCAB:
        raise ValueError(
            f"tokenizer from {path or 'the built-in default'} has only {len(tokenizer)} tokens; "
            "expected a real vocabulary (load the directory with tokenizer.json / vocab.json + "
            "merges.txt through AutoTokenizer, not Qwen2Tokenizer(vocab_file=...))"
        )
    return tokenizer


def add_special_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add the missing SPECIAL_TOKENS as extra special tokens; returns how many were new."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if not missing:
        return 0
    return tokenizer.add_special_tokens(
        {"extra_special_tokens": missing}, replace_extra_special_tokens=False
    )


def encode_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict],
    add_generation_prompt: bool = False,
) -> np.ndarray:
    """Chat messages ({"role", "content"}) → int32 ids (seq,) through the chat template.

    Content may hold SPEECH_PLACEHOLDER; each marker encodes as its single special-token id.
    """
    if tokenizer.chat_template is None:
        raise ValueError("tokenizer has no chat_template; load an instruct model's tokenizer")
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    # return_dict=True gives a BatchEncoding; the stubs' union also allows str / list.
    if not isinstance(out, BatchEncoding):
        raise TypeError(f"apply_chat_template returned {type(out).__name__}, not BatchEncoding")
    return np.asarray(out["input_ids"], dtype=np.int32)


def _training_text() -> list[str]:
    """The demo corpus's sentences (en/de/es/fr/zh) plus ChatML role words."""
    texts = [p.text for phrases in SENTENCES.values() for p in phrases]
    texts += [p.text for phrases in BACKCHANNELS.values() for p in phrases]
    texts += [line.phrase.text for conv in CONVERSATIONS for line in conv.lines]
    texts += ["system", "user", "assistant", "You are a helpful assistant."]
    return texts


@functools.lru_cache(maxsize=1)
def _default_tokenizer_json() -> str:
    # Imported here: only the default path needs the `tokenizers` training API.
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_DEFAULT_VOCAB_SIZE,
        special_tokens=list(CHATML_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    return tok.to_str()


def _build_default_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer

    # Rebuilt from the cached JSON each call so callers never share (and mutate) one instance.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_default_tokenizer_json()),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
