"""Read a recording back from its source the way ingest saw it: decoded, folded, at 16 kHz;
and where that source lives now (`SourceRoots`).

Shared by the steps that need audio again after ingest (diarize, synthesize's voice prompts, the
shard step); ingest's own decode stage keeps its measurements and quarantine logic.

Why `SourceRoots`: the recordings table keeps the URI each source had when it was ingested, and
ids never depend on it (pipelines/ingest/items.py `source_key`). When a corpus is re-mounted
or copied (local disk -> S3), `--source-root OLD=NEW` on any step records the move once in
DIR/_state/source_roots.json; every later read of source audio, on any node, maps URIs below
OLD to NEW here. Nothing is rewritten: the tables, specs and shards stay byte-identical.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minmo.audio.load import load_source
from minmo.audio.measure import fold_dual_mono
from minmo.audio.resample import resample
from minmo.io.channel_uri import map_channels
from pipelines.build import BuildDir, is_build_key
from schemas.units import SAMPLE_RATE_HZ

ROOTS_FILE = ("_state", "source_roots.json")
DECODE_CACHE = 4  # whole recordings kept per batch (segments of one recording arrive together)


@dataclass(frozen=True)
class SourceRoots:
    """Source prefixes that moved: (old, new) pairs, the longest matching old prefix wins;
    and the build itself, which `build:` keys (pipelines/build.py) resolve against wherever
    the build is now (not a recorded move: nothing to record when the build moves)."""

    moves: tuple[tuple[str, str], ...] = ()
    build: BuildDir | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, specs: Iterable[str]) -> SourceRoots:
        """From `OLD=NEW` strings (the CLI's `--source-root`)."""
        moves = []
        for spec in specs:
            old, sep, new = spec.partition("=")
            if not sep or not old or not new:
                raise ValueError(
                    f"--source-root {spec!r}: expected OLD=NEW, e.g. "
                    "/mnt/old/corpus=s3://bucket/corpus"
                )
            moves.append((old.rstrip("/"), new.rstrip("/")))
        return cls(tuple(moves))

    @classmethod
    def load(cls, build: BuildDir) -> SourceRoots:
        """What the build has recorded (none: sources are where ingest found them)."""
        path = build.path(*ROOTS_FILE)
        if not build.exists(path):
            return cls(build=build)
        return cls(tuple((old, new) for old, new in build.read_json(path)["moves"]), build)

    def record(self, build: BuildDir) -> SourceRoots:
        """Add these moves to the build's (a later move of the same old prefix replaces the
        earlier one) and write them atomically; returns what the build now holds."""
        merged = dict(SourceRoots.load(build).moves)
        merged.update(self.moves)
        roots = SourceRoots(tuple(sorted(merged.items())), build)
        if roots.moves:
            build.write_json_atomic(
                build.path(*ROOTS_FILE), {"moves": [list(m) for m in roots.moves]}
            )
        return roots

    def resolve(self, uri: str) -> str:
        """Where the source once at `uri` is now; a `build:` key resolves in this build. A
        multi-source recording's files (minmo/io/channel_uri.py) are each resolved."""
        return map_channels(uri, self._resolve_file)

    def _resolve_file(self, uri: str) -> str:
        if is_build_key(uri):
            if self.build is None:
                raise ValueError(f"{uri!r} names audio in a build: load the roots from it")
            return self.build.resolve_key(uri)
        return _swap_root(uri, self.moves)

    def unresolve(self, uri: str) -> str:
        """Where a source now at `uri` was when it was ingested (ingest keys a URI outside its
        listing's root by the original URI, so a moved manifest target keeps its key)."""
        swaps = tuple((new, old) for old, new in self.moves)
        return map_channels(uri, lambda part: _swap_root(part, swaps))


def _swap_root(uri: str, swaps: tuple[tuple[str, str], ...]) -> str:
    """`uri` with the longest matching `from` root (whole path components) replaced by `to`."""
    best = None
    for frm, to in swaps:
        if (uri == frm or uri.startswith(frm + "/")) and (best is None or len(frm) > len(best[0])):
            best = (frm, to)
    return uri if best is None else best[1] + uri[len(best[0]) :]


def load_audio_16k(
    source_uri: str,
    channels: int,
    storage_options: dict[str, Any],
    roots: SourceRoots | None = None,
) -> np.ndarray:
    """The recording as ingest saw it: decoded (a multi-source recording's files stacked, one
    channel each, by minmo/audio/load.py), dual mono folded, (channels, samples) at 16 kHz.
    `roots` maps a moved source to where it is now."""
    uri = (roots or SourceRoots()).resolve(source_uri)
    audio = load_source(uri, storage_options).audio
    samples = fold_dual_mono(audio.samples)
    if channels == 1 and samples.shape[0] > 1:
        samples = samples.mean(axis=0, keepdims=True)
    return resample(samples, audio.sample_rate_hz, SAMPLE_RATE_HZ)


class RecordingCache:
    """Spans of recordings, each recording decoded once while it stays among the last
    DECODE_CACHE used (a batch's segments of one recording arrive together)."""

    def __init__(self, storage_options: dict[str, Any], roots: SourceRoots | None = None) -> None:
        self.storage_options = storage_options
        self.roots = roots
        self.items: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def span(self, ref: dict[str, Any]) -> np.ndarray:
        """(channels, samples) float32 of the span; one channel picked unless channel is None."""
        key = (ref["uri"], int(ref["channels"]))
        if key not in self.items:
            self.items[key] = load_audio_16k(ref["uri"], key[1], self.storage_options, self.roots)
            while len(self.items) > DECODE_CACHE:
                self.items.popitem(last=False)
        audio = self.items[key]
        start = round(ref["start_s"] * SAMPLE_RATE_HZ)
        end = min(round(ref["end_s"] * SAMPLE_RATE_HZ), audio.shape[1])
        if end - start <= 0:
            raise ValueError(
                f"span {ref['start_s']}-{ref['end_s']} s is empty in {ref['uri']} "
                f"({audio.shape[1] / SAMPLE_RATE_HZ:.3f} s long)"
            )
        if ref["channel"] is not None:
            if ref["channel"] >= audio.shape[0]:
                raise ValueError(f"channel {ref['channel']} missing in {ref['uri']}")
            audio = audio[ref["channel"] : ref["channel"] + 1]
        out = np.ascontiguousarray(audio[:, start:end], dtype=np.float32)
        if not np.isfinite(out).all():
            raise ValueError(f"non-finite samples in {ref['uri']}")
        return out
