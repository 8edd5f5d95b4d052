"""Piper backend: error paths, and a tiny stand-in ONNX "voice" built by a fixture.

No real Piper voice can be downloaded here, so the fixture writes a graph with Piper's
input/output signature (input ids, input_lengths, scales -> audio) that emits a tone whose length
is 256 samples per phoneme id times length_scale. That checks the real `piper-tts` loading,
phonemising and the speaking_rate -> length_scale mapping; it says nothing about voice quality.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from minmo.tts.base import Style, Synthesized, TtsFailure, TtsRequest, Voice
from minmo.tts.piper import PiperBackend
from minmo.tts.registry import make_backend

HOP = 256


@pytest.fixture(scope="module")
def tiny_voice(tmp_path_factory) -> str:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("piper")
    from onnx import TensorProto, helper
    from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

    def const(name, value, dtype):
        return helper.make_node(
            "Constant", [], [name], value=helper.make_tensor(name, dtype, [], [value])
        )

    nodes = [
        helper.make_node("Shape", ["input"], ["shape"]),
        const("one_i", 1, TensorProto.INT64),
        helper.make_node("Gather", ["shape", "one_i"], ["n"]),
        helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["scales", "one_i"], ["length_scale"]),
        const("hop", float(HOP), TensorProto.FLOAT),
        helper.make_node("Mul", ["nf", "hop"], ["t0"]),
        helper.make_node("Mul", ["t0", "length_scale"], ["tf"]),
        helper.make_node("Cast", ["tf"], ["t"], to=TensorProto.INT64),
        const("zero_i", 0, TensorProto.INT64),
        helper.make_node("Range", ["zero_i", "t", "one_i"], ["idx"]),
        helper.make_node("Cast", ["idx"], ["idxf"], to=TensorProto.FLOAT),
        const("omega", float(2 * np.pi * 220 / 22050), TensorProto.FLOAT),
        helper.make_node("Mul", ["idxf", "omega"], ["phase"]),
        helper.make_node("Sin", ["phase"], ["wave"]),
        helper.make_node(
            "Constant",
            [],
            ["out_shape"],
            value=helper.make_tensor("out_shape", TensorProto.INT64, [3], [1, 1, -1]),
        ),
        helper.make_node("Reshape", ["wave", "out_shape"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_piper",
        [
            helper.make_tensor_value_info("input", TensorProto.INT64, [1, None]),
            helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("piper") / "tiny.onnx"
    onnx.save(model, str(path))
    config = {
        "audio": {"sample_rate": 22050},
        "espeak": {"voice": "en-us"},
        "num_symbols": 256,
        "num_speakers": 1,
        "phoneme_type": "espeak",
        "phoneme_id_map": DEFAULT_PHONEME_ID_MAP,
        "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8},
    }
    (path.parent / "tiny.onnx.json").write_text(json.dumps(config))
    return str(path)


def test_missing_model_is_a_clear_failure(tmp_path):
    backend = PiperBackend()
    missing = str(tmp_path / "nope.onnx")
    out = backend.synthesize(
        [
            TtsRequest("a", "Hello.", Voice("s", "en", engine_voice=missing)),
            TtsRequest("b", "Hello.", Voice("s", "de")),
            TtsRequest("c", "  ", Voice("s", "en", engine_voice=missing)),
        ]
    )
    assert all(isinstance(o, TtsFailure) and o.reason == "tts_failed" for o in out)
    assert "not found" in out[0].detail and "nope.onnx" in out[0].detail
    assert "model_paths" in out[1].detail
    assert "empty text" in out[2].detail


def test_missing_config_is_a_clear_failure(tmp_path):
    model = tmp_path / "voice.onnx"
    model.write_bytes(b"not really onnx")
    (out,) = PiperBackend().synthesize(
        [TtsRequest("a", "Hello.", Voice("s", "en", engine_voice=str(model)))]
    )
    assert isinstance(out, TtsFailure) and "voice.onnx.json" in out.detail


def test_tiny_voice_speaks_and_rate_scales_length(tiny_voice):
    backend = make_backend("piper", model_paths={"en": tiny_voice})
    voice = Voice("s", "en")
    requests = [
        TtsRequest("n", "Hello there, friend.", voice),
        TtsRequest("fast", "Hello there, friend.", voice, Style(speaking_rate=2.0)),
        TtsRequest("slow", "Hello there, friend.", voice, Style(speaking_rate=0.5, pitch=1.2)),
    ]
    normal, fast, slow = backend.synthesize(requests)
    for out in (normal, fast, slow):
        assert isinstance(out, Synthesized) and out.sample_rate_hz == 22050
        assert out.samples.dtype == np.float32
    assert len(normal.samples) % HOP == 0 and len(normal.samples) > 10 * HOP
    assert len(fast.samples) == pytest.approx(len(normal.samples) / 2, rel=0.02)
    assert len(slow.samples) == pytest.approx(len(normal.samples) * 2, rel=0.02)
    assert backend.ignored_style["pitch"] == 1
    (again,) = backend.synthesize(requests[:1])
    np.testing.assert_array_equal(again.samples, normal.samples)
