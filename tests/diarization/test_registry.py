"""The diarization backend registry: a toy backend is one settings dataclass, one callable and
one `register` line away from the diarize step and from YAML; backend settings sections are
typed, and a typo names the nearest valid key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from minmo.config import ConfigError
from minmo.diarization import registry
from minmo.diarization.channels import ChannelDiarizerConfig
from minmo.diarization.offline import OfflineDiarizerConfig
from minmo.diarization.registry import Backend, BackendContext, NoSettings
from minmo.diarization.types import SpeakerHints, SpeakerSegment
from pipelines.diarize import BACKENDS, DiarizeConfig, DiarizeStage, choose_backend
from schemas import TURNS


@dataclass(frozen=True)
class HalvesSettings:
    """The toy's one knob."""

    gap_s: float = 0.0


class Halves:
    """A toy backend: the first half of the audio is spk0, the second spk1."""

    def __init__(self, settings: HalvesSettings) -> None:
        self.settings = settings

    def __call__(self, audio: np.ndarray, hints: SpeakerHints) -> list[SpeakerSegment]:
        mid = audio.shape[1] / 16_000 / 2
        return [
            SpeakerSegment("spk0", 0, 0.0, mid - self.settings.gap_s, 0.9),
            SpeakerSegment("spk1", 0, mid, 2 * mid, 0.8),
        ]


@pytest.fixture()
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register `halves` for one test only (the registry is process-wide)."""
    monkeypatch.setattr(registry, "BACKENDS", dict(registry.BACKENDS))
    registry.register(Backend("halves", HalvesSettings, lambda s, _: Halves(s), uses_model=False))


def test_the_built_in_backends_keep_their_names() -> None:
    assert BACKENDS == ("auto", "channels", "pyannote", "offline")
    assert registry.get("channels").settings is ChannelDiarizerConfig
    assert registry.get("offline").settings is OfflineDiarizerConfig
    assert registry.get("pyannote").needs_model_path


def test_defaults_are_each_backends_own_defaults() -> None:
    config = DiarizeConfig()
    assert config.backend_options == {}
    assert config.settings("offline") == OfflineDiarizerConfig()
    assert config.settings("channels") == ChannelDiarizerConfig()
    assert config.settings("pyannote") == NoSettings()


def test_auto_picks_channels_for_stereo_and_offline_or_pyannote_for_mono() -> None:
    assert choose_backend(DiarizeConfig(), 2) == "channels"
    assert choose_backend(DiarizeConfig(), 1) == "offline"
    assert choose_backend(DiarizeConfig(diarization_model="/m"), 1) == "pyannote"
    assert choose_backend(DiarizeConfig(backend="offline"), 2) == "offline"


def test_backend_settings_come_from_yaml_typed_and_survive_the_trip_to_an_actor() -> None:
    spec = yaml.safe_load(
        """
        diarize:
          backend: auto
          backend_options:
            offline: {window_s: 1.5, step_s: 0.25}
            channels: {leakage_margin_db: 12}
        """
    )
    config = DiarizeConfig(**spec["diarize"])
    assert config.settings("offline") == OfflineDiarizerConfig(window_s=1.5, step_s=0.25)
    assert config.settings("channels") == ChannelDiarizerConfig(leakage_margin_db=12)
    # actors get the config as a dict (Ray pickles plain data) and rebuild the typed sections
    again = DiarizeConfig(**config.to_dict())
    assert again.backend_options == config.backend_options


def test_a_typo_in_a_backend_section_names_the_nearest_key() -> None:
    with pytest.raises(ConfigError, match='unknown key "window_sz".*did you mean "window_s"'):
        DiarizeConfig(backend_options={"offline": {"window_sz": 1.5}})
    with pytest.raises(ConfigError, match='did you mean "leakage_margin_db"'):
        DiarizeConfig(backend_options={"channels": {"leakage_margin": 12}})


def test_an_unknown_backend_names_the_nearest_one() -> None:
    with pytest.raises(ValueError, match='did you mean "offline"'):
        DiarizeConfig(backend_options={"ofline": {}})
    with pytest.raises(ValueError, match='did you mean "channels"'):
        DiarizeConfig(backend="channel")


def test_settings_values_are_still_checked_by_the_backends_dataclass() -> None:
    with pytest.raises(ValueError, match="step_s"):
        DiarizeConfig(backend_options={"offline": {"step_s": 2.0}})


def test_pyannote_without_a_model_is_refused() -> None:
    with pytest.raises(ValueError, match="diarization_model"):
        DiarizeConfig(backend="pyannote")


def test_a_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match="already taken"):
        registry.register(Backend("offline", NoSettings, lambda s, c: None))
    with pytest.raises(ValueError, match="already taken"):
        registry.register(Backend("auto", NoSettings, lambda s, c: None))


def test_a_registered_toy_backend_diarizes_through_the_step(toy: None, tmp_path: Path) -> None:
    wav = tmp_path / "two.wav"
    sf.write(wav, np.zeros(16_000 * 4, dtype=np.float32), 16_000)
    config = DiarizeConfig(backend="halves", backend_options={"halves": {"gap_s": 0.5}})
    assert config.settings("halves") == HalvesSettings(gap_s=0.5)
    assert registry.build("halves", config.settings("halves"), BackendContext()).settings.gap_s
    stage = DiarizeStage(config.to_dict())
    item = {
        "recording_id": "r1",
        "source_uri": str(wav),
        "channels": 1,
        "duration_s": 4.0,
    }
    result = stage.diarize(item)
    rows = result["tables"]["turns"]
    assert [(r["speaker"], r["start_s"], r["end_s"], r["backend"]) for r in rows] == [
        ("spk0", 0.0, 1.5, "halves"),
        ("spk1", 2.0, 4.0, "halves"),
    ]
    assert result["stats"]["backend_halves"] == 1
    assert TURNS.from_rows(rows).num_rows == 2  # the table takes any registered name
