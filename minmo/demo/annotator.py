"""The demo's pseudo-labeller: a tiny random-init SenseVoiceSmall directory for `annotate`.

Owns where the demo keeps it (`OUT/models/sensevoice-tiny/`) and writing it once. The directory
has the released layout (minmo.testing.tiny_models), so the demo's `annotate` step runs the same
funasr `AutoModel` code a real SenseVoiceSmall directory runs; its weights are random, so its
labels are noise and the demo's `label_source` / filters use them only where that is harmless.
Must not: download anything.
"""

from __future__ import annotations

from pathlib import Path

from minmo.io.fs import uri_scheme
from minmo.testing.tiny_models import build_tiny_sensevoice_dir

ANNOTATOR_DIR = "models/sensevoice-tiny"
_DONE = "configuration.json"  # written last by the builder: present means the directory is whole


def write_demo_annotator(out: str) -> str | None:
    """Write the tiny SenseVoiceSmall under `out` unless it is already there; returns its path,
    or None when `out` is not local (funasr loads a model from a local directory only)."""
    if uri_scheme(out) not in (None, "file"):
        return None
    path = Path(out.removeprefix("file://")) / ANNOTATOR_DIR
    if not (path / _DONE).is_file():
        build_tiny_sensevoice_dir(path)
    return str(path)
