"""Voice token LM: 5:15 layout, loss, overfit, streaming generation, CosyVoice 2 loading."""

from __future__ import annotations

import pytest
import torch

from minmo.model.voice_lm import (
    IGNORE,
    SOS,
    SPEECH_VOCAB,
    TURN_OF_SPEECH,
    VoiceLMConfig,
    VoiceTokenLM,
)
from minmo.testing.tiny_models import build_tiny_cosyvoice2_llm_pt

FILL = SPEECH_VOCAB + 2
EOS = SPEECH_VOCAB


@pytest.fixture(scope="module")
def tiny() -> VoiceTokenLM:
    torch.manual_seed(0)
    return VoiceTokenLM(VoiceLMConfig.tiny())


def _sample(n: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 64, generator=g), torch.randint(0, SPEECH_VOCAB, (m,), generator=g)


# ---- 1. layout, position by position --------------------------------------------------------


def _chunk(j: int) -> list[tuple[str, int]]:
    return [("sem", 5 * j + i) for i in range(5)] + [("speech", 15 * j + i) for i in range(15)]


def _chunk_targets(j: int, sp: list[int]) -> list[int]:
    # 4 ignored, the 5th predicts the chunk's first token, speech predicts the next, then FILL
    return [IGNORE] * 4 + sp[15 * j : 15 * j + 15] + [FILL]


CASES = {
    "12+40": (
        12,
        40,
        lambda: (
            [("sos", 0)]
            + _chunk(0)
            + _chunk(1)
            + [("sem", 10), ("sem", 11), ("turn", 0)]
            + [("speech", k) for k in range(30, 40)]
        ),
        lambda sp: (
            [IGNORE]
            + _chunk_targets(0, sp)
            + _chunk_targets(1, sp)
            + [IGNORE, IGNORE]
            + sp[30:40]
            + [EOS]
        ),
    ),
    "10+30": (
        10,
        30,
        lambda: [("sos", 0)] + _chunk(0) + _chunk(1) + [("turn", 0)],
        lambda sp: [IGNORE] + _chunk_targets(0, sp) + _chunk_targets(1, sp) + [EOS],
    ),
    # 2 full text chunks need 30 tokens: fall back to unistream (all text first)
    "12+20 short speech": (
        12,
        20,
        lambda: (
            [("sos", 0)]
            + [("sem", i) for i in range(12)]
            + [("turn", 0)]
            + [("speech", k) for k in range(20)]
        ),
        lambda sp: [IGNORE] * 13 + sp + [EOS],
    ),
    "3+8 partial chunk only": (
        3,
        8,
        lambda: (
            [("sos", 0), ("sem", 0), ("sem", 1), ("sem", 2), ("turn", 0)]
            + [("speech", k) for k in range(8)]
        ),
        lambda sp: [IGNORE] * 4 + sp + [EOS],
    ),
    "7+0 no speech": (
        7,
        0,
        lambda: [("sos", 0)] + [("sem", i) for i in range(7)] + [("turn", 0)],
        lambda sp: [IGNORE] * 8 + [EOS],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_build_sequence_position_by_position(tiny: VoiceTokenLM, case: str) -> None:
    n, m, want_layout, want_targets = CASES[case]
    semantic, speech = _sample(n, m, seed=1)
    layout = tiny.layout(n, m)
    assert layout == want_layout()
    inputs, targets = tiny.build_sequence(semantic, speech)
    assert inputs.shape == (len(layout), 64)
    assert targets.tolist() == want_targets(speech.tolist())
    for p, (kind, i) in enumerate(layout):
        want = {
            "sos": lambda i: tiny.special_embedding.weight[SOS],
            "turn": lambda i: tiny.special_embedding.weight[TURN_OF_SPEECH],
            "sem": lambda i: semantic[i],
            "speech": lambda i: tiny.speech_embedding.weight[speech[i]],
        }[kind](i)
        assert torch.equal(inputs[p], want), (case, p, kind, i)


def test_unistream_on_request(tiny: VoiceTokenLM) -> None:
    layout = tiny.layout(12, 40, streaming=False)
    assert layout[:14] == [("sos", 0)] + [("sem", i) for i in range(12)] + [("turn", 0)]
    assert layout[14:] == [("speech", k) for k in range(40)]


# ---- 2. padded batch ------------------------------------------------------------------------


def _batch(items: list[tuple[torch.Tensor, torch.Tensor]]):
    n = max(s.shape[0] for s, _ in items)
    m = max(t.shape[0] for _, t in items)
    semantic = torch.zeros(len(items), n, 64)
    speech = torch.full((len(items), m), -1, dtype=torch.long)  # junk padding must not matter
    for i, (s, t) in enumerate(items):
        semantic[i, : s.shape[0]] = s
        speech[i, : t.shape[0]] = t
    sl = torch.tensor([s.shape[0] for s, _ in items])
    ml = torch.tensor([t.shape[0] for _, t in items])
    return semantic, sl, speech, ml


def test_forward_backward_padding_does_not_leak() -> None:
    torch.manual_seed(0)
    model = VoiceTokenLM(VoiceLMConfig.tiny())
    items = [_sample(12, 40, seed=2), _sample(6, 21, seed=3)]
    out = model(*_batch(items))
    assert torch.isfinite(out["loss"])
    assert int(out["n_targets"]) == (40 + 2 + 1) + (21 + 1 + 1)  # tokens, FILLs, EOS
    assert int(out["n_targets"]) == int((out["targets"] != IGNORE).sum())
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    with torch.no_grad():
        out = model(*_batch(items))
        for i, item in enumerate(items):
            alone = model(*_batch([item]))
            n = int(alone["lengths"][0])
            assert torch.allclose(out["logits"][i, :n], alone["logits"][0], atol=1e-5)
            per_item = torch.nn.functional.cross_entropy(
                out["logits"][i], out["targets"][i], ignore_index=IGNORE
            )
            assert torch.allclose(per_item, alone["loss"], atol=1e-5)


# ---- 3. overfit, 5. streaming generation ------------------------------------------------------


@pytest.fixture(scope="module")
def overfit():
    torch.manual_seed(0)
    model = VoiceTokenLM(VoiceLMConfig.tiny())
    items = [_sample(12, 40, seed=4), _sample(7, 24, seed=5)]
    batch = _batch(items)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(100):
        loss = model(*batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), items, losses


def test_overfit_loss_falls(overfit) -> None:
    _, _, losses = overfit
    assert losses[-1] <= 0.1 * losses[0], (losses[0], losses[-1])


def test_generate_stream_reproduces_overfit_sample(overfit) -> None:
    model, items, _ = overfit
    semantic, speech = items[0]  # 12 vectors: 2 full chunks + 2, 40 tokens
    want = speech.tolist()
    chunks = list(model.generate_stream([semantic[:5], semantic[5:10], semantic[10:]]))
    assert [c.final for c in chunks] == [False, False, True]
    assert [c.n_semantic for c in chunks] == [5, 10, 12]
    assert all(len(c.tokens) <= 15 for c in chunks if not c.final)
    assert chunks[0].tokens == want[:15]
    assert chunks[1].tokens == want[15:30]
    assert chunks[2].tokens == want[30:]
    assert chunks[2].reason == "end_of_speech"
    for c in chunks:
        assert c.lm_s > 0 and c.per_token_s > 0 and 0 < c.first_token_s <= c.lm_s
    # arrival in odd pieces is buffered into chunks of 5: same tokens
    pieces = [semantic[:3], semantic[3:4], semantic[4:11], semantic[11:]]
    again = list(model.generate_stream(pieces))
    assert [c.tokens for c in again] == [c.tokens for c in chunks]


def test_generate_stream_max_tokens_and_sampling(overfit) -> None:
    model, items, _ = overfit
    semantic, _ = items[0]
    chunks = list(model.generate_stream([semantic], max_tokens=20))
    assert sum(len(c.tokens) for c in chunks) == 20
    assert chunks[-1].reason == "max_tokens"
    g = torch.Generator().manual_seed(0)
    sampled = list(model.generate_stream([semantic], sampling="top_k", top_k=5, generator=g))
    assert sampled[-1].final
    assert all(0 <= t < SPEECH_VOCAB for c in sampled for t in c.tokens)
    with pytest.raises(ValueError, match="sampling"):
        list(model.generate_stream([semantic], sampling="beam"))


# ---- 4. CosyVoice 2 llm.pt ----------------------------------------------------------------------


def test_from_cosyvoice2_round_trip(tmp_path) -> None:
    config = VoiceLMConfig.tiny()
    path = build_tiny_cosyvoice2_llm_pt(tmp_path / "llm.pt", config, seed=3)
    state = torch.load(path, weights_only=True)
    assert "llm.model.model.embed_tokens.weight" in state
    assert "llm.model.lm_head.weight" in state
    model = VoiceTokenLM.from_cosyvoice2(path, config)
    ours = model.state_dict()
    assert torch.equal(ours["special_embedding.weight"], state["llm_embedding.weight"])
    assert torch.equal(ours["head.weight"], state["llm_decoder.weight"])
    assert torch.equal(ours["head.bias"], state["llm_decoder.bias"])
    assert torch.equal(ours["speech_embedding.weight"], state["speech_embedding.weight"])
    body = [k for k in ours if k.startswith("model.")]
    assert body and all(torch.equal(ours[k], state["llm.model." + k]) for k in body)
    assert len(ours) == len(state) - 2  # only the text embedding and text head are dropped

    # Our body computes what CosyVoice 2's Qwen2ForCausalLM body computes on the same inputs.
    from transformers import Qwen2ForCausalLM

    ref = Qwen2ForCausalLM(config.qwen2_config(vocab_size=300, tie_word_embeddings=True))
    ref.load_state_dict(
        {k[len("llm.model.") :]: v for k, v in state.items() if k.startswith("llm.")}
    )
    x = torch.randn(1, 9, config.hidden_size)
    with torch.no_grad():
        want = ref.model(inputs_embeds=x).last_hidden_state
        got = model.model(inputs_embeds=x).last_hidden_state
    assert torch.allclose(got, want, atol=1e-6)


def test_from_cosyvoice2_rejects_bad_checkpoints(tmp_path) -> None:
    config = VoiceLMConfig.tiny()
    path = build_tiny_cosyvoice2_llm_pt(tmp_path / "llm.pt", config)
    state = torch.load(path, weights_only=True)

    extra = dict(state, **{"flow.encoder.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"unexpected keys.*flow\.encoder\.weight"):
        VoiceTokenLM.from_cosyvoice2(tmp_path / "extra.pt", config)

    missing = {k: v for k, v in state.items() if k != "llm_decoder.bias"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"not in the checkpoint.*head\.bias"):
        VoiceTokenLM.from_cosyvoice2(tmp_path / "missing.pt", config)

    with pytest.raises(ValueError, match="shape mismatches"):
        VoiceTokenLM.from_cosyvoice2(path, VoiceLMConfig(**{**config.__dict__, "hidden_size": 32}))


# ---- 6. full size ---------------------------------------------------------------------------------


def test_full_size_parameter_count() -> None:
    with torch.device("meta"):
        model = VoiceTokenLM(VoiceLMConfig.full())
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 370e6) <= 0.1 * 370e6, n
    # no text-token table: the 151936 x 896 Qwen embedding is not allocated
    assert model.model.embed_tokens is None
    assert model.speech_embedding.weight.shape == (SPEECH_VOCAB + 3, 896)
    assert model.head.weight.shape == (SPEECH_VOCAB + 3, 896)
