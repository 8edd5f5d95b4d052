"""The URI of a recording whose channels are stored one file each (a multi-source recording).

Owns: the one spelling of such a recording in a table's `source_uri` (and its `source_key`):
`channels:` followed by a JSON array of the channel files' URIs, channel 0 first, e.g.
`channels:["/corpus/4410_a.wav","/corpus/4410_b.wav"]`. Must not: read or decode audio
(minmo/audio/load.py stacks the files), or know any source layout.

Why one string and not a list column: every step after ingest passes `source_uri` through
untouched (sample specs, shard provenance, relocation) and reads audio only through
minmo/audio/load.py, so a composite string keeps every table, spec and reader as it is; only the
few places that interpret a URI (the loader, `SourceRoots`, source keys, the listing's existence
check) look inside, through `channel_uris` / `map_channels`. A plain URI is a one-channel-file
recording and passes through every function here unchanged. The prefix cannot be mistaken for a
stored location: table URIs are absolute paths or `scheme://` URIs, and `channels:` is neither.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

CHANNELS_PREFIX = "channels:"


def is_multi_source(uri: str) -> bool:
    """Whether `uri` names one file per channel."""
    return uri.startswith(CHANNELS_PREFIX)


def join_channels(uris: Sequence[str]) -> str:
    """The URI of a recording made of these files, one per channel in order (one file: its own
    URI, so that a one-element list is exactly the plain file)."""
    if not uris:
        raise ValueError("a recording needs at least one channel file")
    if len(uris) == 1:
        return uris[0]
    return CHANNELS_PREFIX + json.dumps(list(uris), ensure_ascii=False, separators=(",", ":"))


def channel_uris(uri: str) -> list[str]:
    """The files of a recording, channel order (a plain URI: itself). ValueError when the
    composite is malformed (a table edited by hand): it must never be read as a path."""
    if not is_multi_source(uri):
        return [uri]
    try:
        parts = json.loads(uri[len(CHANNELS_PREFIX) :])
    except ValueError as err:
        raise ValueError(f"{uri[:200]!r}: not a JSON array after {CHANNELS_PREFIX!r}") from err
    if not isinstance(parts, list) or len(parts) < 2 or not all(isinstance(p, str) for p in parts):
        raise ValueError(f"{uri[:200]!r}: expected two or more channel URIs as strings")
    return parts


def map_channels(uri: str, change: Callable[[str], str]) -> str:
    """`uri` with `change` applied to each channel file's URI (a plain URI: to itself)."""
    return join_channels([change(part) for part in channel_uris(uri)])
