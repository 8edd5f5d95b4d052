"""The trainer step's batched index operations against their per-sample references
(tests/model/reference_step.py, the code before issue 20): the splice, the semantic-vector
gather, the voice LM's 5:15 assembly and the short-clip fbank, on random batches of mixed
lengths (samples without speech, with speech but no frames, without assistant text, clips
shorter than a window), several seeds each."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from minmo.model.batch import Batch
from minmo.model.llm import Spliced, splice
from minmo.model.minmo import MinMo, SpecialIds
from minmo.model.output_projector import OutputProjector, OutputProjectorConfig
from minmo.model.voice_encoder import VoiceEncoder, VoiceEncoderConfig
from minmo.model.voice_lm import SPEECH_VOCAB, VoiceLMConfig, VoiceTokenLM
from tests.model.reference_step import (
    fbank_reference,
    semantic_reference,
    splice_reference,
    voice_lm_assemble_reference,
)

SEEDS = range(6)
SPECIAL = SpecialIds(speech_start=97, speech_end=98, turn_end=99)
HIDDEN = 16


def _text_batch(g: torch.Generator, with_speech: bool) -> dict:
    """Random padded text ids with markers, speech frames for some samples (0 for others)."""
    b = int(torch.randint(1, 7, (1,), generator=g))
    lengths = torch.randint(1, 24, (b,), generator=g)
    ids = torch.randint(0, 90, (b, int(lengths.max())), generator=g)
    ids[:, -1] = 5  # padding past a length is never read: make it junk, not 0
    n_speech = torch.randint(0, 9, (b,), generator=g) * (torch.rand(b, generator=g) < 0.7)
    for i in range(b):
        n = int(lengths[i])
        ends = torch.randint(0, n, (int(torch.randint(0, 3, (1,), generator=g)),), generator=g)
        ids[i, ends] = SPECIAL.turn_end
        ids[i, int(torch.randint(0, n, (1,), generator=g))] = SPECIAL.speech_start
        if n > 3 and torch.rand(1, generator=g) < 0.3:  # a second marker: the first one counts
            ids[i, n - 1] = SPECIAL.speech_start
    speech = torch.randn(b, int(n_speech.max()) + 1, HIDDEN, generator=g)
    return {
        "token_embeddings": torch.randn(b, ids.shape[1], HIDDEN, generator=g),
        "input_ids": ids,
        "input_lengths": lengths,
        "target_start": torch.randint(0, 26, (b,), generator=g),
        "speech": speech if with_speech else None,
        "speech_lengths": n_speech if with_speech else None,
        "speech_start_id": SPECIAL.speech_start,
    }


def _fields(sp: Spliced) -> list[torch.Tensor]:
    return [sp.embeds, sp.attention_mask, sp.labels, sp.token_ids, sp.speech_positions]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("with_speech", [True, False])
def test_splice_matches_the_per_sample_reference(seed: int, with_speech: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    inputs = _text_batch(g, with_speech)
    grads = []
    for fn in (splice, splice_reference):
        leaves = {
            k: inputs[k].clone().requires_grad_()
            for k in ("token_embeddings", "speech")
            if inputs[k] is not None
        }
        sp = fn(**{**inputs, **leaves})
        grads.append((_fields(sp), leaves))
        weight = torch.randn(sp.embeds.shape, generator=torch.Generator().manual_seed(seed))
        (sp.embeds * weight).sum().backward()
    (new, new_leaves), (ref, ref_leaves) = grads
    for a, b in zip(new, ref, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    for name, leaf in new_leaves.items():
        ref_grad = ref_leaves[name].grad  # None where the reference read none of the tensor
        ref_grad = torch.zeros_like(leaf) if ref_grad is None else ref_grad
        assert torch.equal(leaf.grad, ref_grad), name


def test_splice_refuses_speech_without_a_marker_as_before() -> None:
    inputs = _text_batch(torch.Generator().manual_seed(0), True)
    inputs["input_ids"][1:] = 3  # samples 1.. lose their markers
    inputs["speech_lengths"][:] = 2
    if inputs["input_ids"].shape[0] < 2:
        pytest.skip("one-sample batch")
    messages = []
    for fn in (splice, splice_reference):
        with pytest.raises(ValueError) as error:
            fn(**inputs)
        messages.append(str(error.value))
    assert messages[0] == messages[1] and "sample 1 " in messages[0]


def _stub_minmo() -> SimpleNamespace:
    """What MinMo._semantic reads from its model: the special ids and the output projector."""
    torch.manual_seed(0)
    projector = OutputProjector(OutputProjectorConfig(llm_size=HIDDEN, voice_lm_size=8))
    return SimpleNamespace(special=SPECIAL, output_projector=projector)


@pytest.mark.parametrize("seed", SEEDS)
def test_semantic_gather_matches_the_per_sample_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    inputs = _text_batch(g, with_speech=True)
    sp = splice(**inputs)
    batch = Batch(inputs["input_ids"], inputs["input_lengths"], inputs["target_start"])
    hidden = torch.randn(*sp.embeds.shape, generator=g)
    embedding = torch.nn.Embedding(100, HIDDEN)
    model = _stub_minmo()
    try:
        want = semantic_reference(model, sp, hidden, embedding, batch)
    except ValueError:
        with pytest.raises(ValueError, match="no assistant text"):
            MinMo._semantic(model, sp, hidden, embedding, batch)
        return
    got = MinMo._semantic(model, sp, hidden, embedding, batch)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_semantic_gather_refuses_a_batch_without_assistant_text() -> None:
    inputs = _text_batch(torch.Generator().manual_seed(3), with_speech=True)
    inputs["target_start"][:] = 1000
    sp = splice(**inputs)
    batch = Batch(inputs["input_ids"], inputs["input_lengths"], inputs["target_start"])
    hidden = torch.zeros(*sp.embeds.shape)
    with pytest.raises(ValueError, match="no assistant text"):
        MinMo._semantic(_stub_minmo(), sp, hidden, torch.nn.Embedding(100, HIDDEN), batch)


@pytest.fixture(scope="module")
def voice_lm() -> VoiceTokenLM:
    torch.manual_seed(0)
    return VoiceTokenLM(VoiceLMConfig.tiny())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("streaming", [True, False])
def test_voice_lm_assembly_matches_the_per_sample_reference(
    voice_lm: VoiceTokenLM, seed: int, streaming: bool
) -> None:
    g = torch.Generator().manual_seed(200 + seed)
    b = int(torch.randint(1, 7, (1,), generator=g))
    # Semantic counts around chunk multiples, speech both long enough to interleave and too short
    # (the unistream fallback), and the empty cases.
    n_sem = torch.randint(0, 23, (b,), generator=g)
    n_sp = torch.randint(0, 70, (b,), generator=g)
    n_sem[0], n_sp[-1] = 0, 0
    semantic = torch.randn(b, int(n_sem.max()) + 2, 64, generator=g)
    speech = torch.randint(0, SPEECH_VOCAB, (b, int(n_sp.max()) + 3), generator=g)
    speech[torch.arange(speech.shape[1])[None, :] >= n_sp[:, None]] = -1  # junk padding
    args = (semantic, n_sem, speech, n_sp, streaming)
    got = voice_lm.assemble(*args)
    want = voice_lm_assemble_reference(voice_lm, *args)
    for a, b_ in zip(got, want, strict=True):
        assert a.dtype == b_.dtype and torch.equal(a, b_)


@pytest.fixture(scope="module")
def encoder() -> VoiceEncoder:
    torch.manual_seed(0)
    return VoiceEncoder(VoiceEncoderConfig.tiny()).eval()


@pytest.mark.parametrize("seed", SEEDS)
def test_fbank_matches_the_per_clip_reference(encoder: VoiceEncoder, seed: int) -> None:
    g = torch.Generator().manual_seed(300 + seed)
    b = 8
    # Clips shorter than the 400-sample window (every FFT size 1..512 among them; two of one
    # length, batched together) and longer.
    lengths = torch.cat(
        [
            torch.tensor([2, 3, 399, 399]),
            torch.randint(2, 400, (2,), generator=g),
            torch.randint(400, 4000, (b - 6,), generator=g),
        ]
    )[torch.randperm(b, generator=g)]
    waves = torch.rand(b, int(lengths.max()), generator=g) * 2 - 1
    got, got_counts = encoder.fbank(waves, lengths)
    want, want_counts = fbank_reference(encoder, waves, lengths)
    assert torch.equal(got_counts, want_counts) and got.shape == want.shape
    valid = torch.arange(got.shape[1])[None, :] < got_counts[:, None]
    # Short clips too: each window size's clips take funasr's own computation, batched.
    assert torch.equal(got[valid], want[valid])
