"""Diarization backends by name: each name's settings dataclass (its YAML section) and constructor.

Owns: the mapping, the check of a backend's YAML settings against its dataclass (an unknown key
is an error naming the nearest valid one), and building a backend from its settings. Must not:
choose a backend per recording (`auto` is the diarize step's policy) or hold any algorithm.

Adding a backend is one module and one line: write `minmo/diarization/<name>.py` with a frozen
settings dataclass and a callable `(audio, hints) -> list[SpeakerSegment]` (see types.py), then
add its `register(...)` line at the bottom of this file. Its settings are then reachable from
a job spec with no other change:

    diarize:
      backend: auto
      backend_options:
        offline: {window_s: 1.5}
        channels: {leakage_margin_db: 12}

The line lives here, not in the backend's module, so that every process that imports this
registry (Ray workers included) knows every backend without importing anything else first.

The registry, not an enum in schemas/, is the source of truth for backend names: a name is what
the `turns` table's `backend` column holds, and schemas/ cannot see what is registered here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Protocol

import numpy as np

from minmo.config import check_keys, nearest
from minmo.diarization.channels import ChannelDiarizer, ChannelDiarizerConfig
from minmo.diarization.offline import OfflineDiarizer, OfflineDiarizerConfig
from minmo.diarization.pyannote_backend import PyannoteDiarizer
from minmo.diarization.types import SpeakerHints, SpeakerSegment

AUTO = "auto"
"""Not a backend: the diarize step's per-recording choice among registered ones."""


class Diarizer(Protocol):
    """What a backend's constructor returns: float32 (channels, samples) 16 kHz -> segments."""

    def __call__(self, audio: np.ndarray, hints: SpeakerHints) -> list[SpeakerSegment]: ...


@dataclass(frozen=True)
class BackendContext:
    """What the diarize step knows that a backend may need besides its own settings."""

    model: str | None = None
    """The step's `diarization_model`: a local pipeline directory or a cached repo id."""
    device: str | None = None
    """The step's torch `device`; None lets a model backend pick cuda when present."""


@dataclass(frozen=True)
class NoSettings:
    """The settings of a backend that has none of its own (its YAML section must be empty)."""


@dataclass(frozen=True)
class Backend:
    """One registered backend."""

    name: str
    settings: type
    """Frozen dataclass of the backend's own knobs; `backend_options.<name>` maps onto it."""
    build: Callable[[Any, BackendContext], Diarizer]
    """(settings instance, context) -> a loaded backend, built once per actor."""
    uses_model: bool = True
    """Whether it runs a neural model worth a GPU (decides actor GPUs in the step)."""
    needs_model_path: bool = False
    """Whether it cannot run without the step's `diarization_model`."""


BACKENDS: dict[str, Backend] = {}
"""Every backend by name, in registration order."""


def register(backend: Backend) -> Backend:
    """Add `backend` under its name; a second backend of the same name is a mistake."""
    if backend.name == AUTO or backend.name in BACKENDS:
        raise ValueError(f"diarization backend {backend.name!r} is already taken")
    if not (isinstance(backend.settings, type) and is_dataclass(backend.settings)):
        raise TypeError(f"{backend.name}: settings must be a dataclass, got {backend.settings!r}")
    BACKENDS[backend.name] = backend
    return backend


def get(name: str) -> Backend:
    """The backend called `name`; an unknown name is an error naming the nearest one."""
    if name not in BACKENDS:
        raise ValueError(
            f"unknown diarization backend {name!r}{nearest(name, BACKENDS)}; "
            f"registered: {', '.join(BACKENDS)}"
        )
    return BACKENDS[name]


def parse_settings(name: str, section: Any, where: str = "diarize.backend_options") -> Any:
    """`section` (a YAML mapping, or already the settings dataclass) -> `name`'s settings.

    Unknown keys raise naming the nearest valid one; the dataclass validates the values."""
    settings = get(name).settings
    if isinstance(section, settings):
        return section
    if not isinstance(section, Mapping):
        raise ValueError(f"{where}.{name} must be a mapping of settings, got {section!r}")
    check_keys(f"{where}.{name}", section, [f.name for f in fields(settings)])
    return settings(**section)


def build(name: str, settings: Any, context: BackendContext) -> Diarizer:
    """Load the backend called `name` with its (parsed) settings."""
    return get(name).build(settings, context)


def _pyannote(_: NoSettings, context: BackendContext) -> Diarizer:
    assert context.model is not None  # DiarizeConfig refuses pyannote without a model
    return PyannoteDiarizer(context.model, device=context.device)


# One line per backend. `offline` takes no device: the step never passed it one (kept as is).
register(
    Backend("channels", ChannelDiarizerConfig, lambda s, _: ChannelDiarizer(s), uses_model=False)
)
register(Backend("pyannote", NoSettings, _pyannote, needs_model_path=True))
register(Backend("offline", OfflineDiarizerConfig, lambda s, _: OfflineDiarizer(s)))
