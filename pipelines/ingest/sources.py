"""Source layouts → a stream of `SourceItem`s (audio to ingest) and quarantine rows.

Owns: recognising a source's layout (`detect_format`) and the one entry point ingest calls
(`list_sources`); each layout's reader lives in `pipelines/ingest/layouts/`.

Must not: open audio, or hold a source's listing in memory: every reader is a generator that
streams its manifest (JSONL by line, CSV by row, Parquet by batch, directories one at a time).

    from pipelines.ingest.sources import list_sources
    for entry in list_sources("s3://corpus/train/", corpus="mycorpus", task="asr"):
        ...  # a SourceItem, or a dict: a quarantine row (step "ingest") with its reason code

Layouts (`fmt`) are registered in `LAYOUTS` (name -> reader); `FORMATS` is `auto` plus their
names, the one list the ingest config and the CLI offer. Adding a layout is one module in
layouts/ (a `read(src, ctx, **fs_options)` generator) and one `LAYOUTS` line; `auto` detection
knows only the built-in ones. Built in: `dir` (a directory tree, a glob or one audio file, with
sidecar or Kaldi-style transcripts; see layouts/directory.py), `jsonl` / `csv` / `parquet` (one
row per audio file; layouts/manifest.py), `kaldi` (a data dir with wav.scp; layouts/kaldi.py),
`lhotse` (recordings + supervisions or cuts manifests; layouts/lhotse.py), or `auto`:
- a file: `.jsonl`, `.jsonl.gz`, `.json`, `.json.gz` → `lhotse` when its first record is a Lhotse
  cut or recording, else `jsonl`; `.csv`, `.tsv` → `csv`; `.parquet`, `.pq` → `parquet`; an
  audio file → `dir` (that file alone);
- a directory: with `wav.scp` → `kaldi`; with a Lhotse cuts or recordings manifest among its
  own files → `lhotse`; otherwise → `dir`;
- a glob (`*`, `?`, `[`) → `dir`.

Every item and refusal carries a `source_key` (`corpus:path relative to the source's root`,
see `source_root`): the relocatable identity that recording ids and resume key on.

Labels (schemas/labels.py) are read by every layout that can carry them and parsed there: an
item carries its normalised `labels` and the `label_problems` that become `bad_label` rows
beside its recording. Columns a reader skipped are tallied in the caller's `ignored`.

Every audio location is checked to exist (batched; `check_exists=False` skips it, e.g. when the
listing is known good and the store is slow): a missing file is a `missing_file` row, never an
exception. What raises is only what no row can describe: an unknown `fmt`, a source that does
not exist or whose layout cannot be told.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from minmo.io.fs import Location
from pipelines.ingest.items import SourceItem
from pipelines.ingest.layouts import directory, kaldi, lhotse, manifest
from pipelines.ingest.layouts.common import ColumnTally, Keyer, Pending, ReadContext, Row, settle
from pipelines.ingest.layouts.directory import AUDIO_EXTENSIONS, is_audio_name, is_glob, split_glob

__all__ = [
    "AUDIO_EXTENSIONS",
    "FORMATS",
    "LAYOUTS",
    "ColumnTally",
    "Layout",
    "detect_format",
    "list_sources",
]

JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
# Detection opens at most this many JSON files of a directory to look for Lhotse manifests.
DETECT_MAX_JSON_FILES = 64

Reader = Callable[..., Iterator[Pending | Row]]


@dataclass(frozen=True)
class Layout:
    """One source layout: how to read it, and what its keys are relative to."""

    read: Reader
    """(src, ctx: ReadContext, **fs_options) -> Pending items and quarantine rows, streamed."""
    manifest: bool = False
    """Whether `src` is one manifest file listing audio elsewhere: its corpus and key root are
    the directory holding it (otherwise `src` itself when it is a directory)."""


LAYOUTS: dict[str, Layout] = {
    "dir": Layout(directory.read),
    "jsonl": Layout(manifest.read_jsonl, manifest=True),
    "csv": Layout(manifest.read_csv, manifest=True),
    "parquet": Layout(manifest.read_parquet, manifest=True),
    "kaldi": Layout(kaldi.read),
    "lhotse": Layout(lhotse.read),
}
"""Every source layout by name (`fmt`)."""

FORMATS = ("auto", *LAYOUTS)
"""What `fmt` (and ingest's `format`) may be: `auto` or a registered layout."""


def detect_format(src: str, **fs_options: Any) -> str:
    """The concrete layout of `src` (see the module docstring for the rules)."""
    if is_glob(src):
        return "dir"
    loc = Location.from_uri(src, **fs_options)
    info = loc.info()
    if info.is_file:
        return _file_format(loc, src)
    if info.type == pafs.FileType.Directory:
        return _directory_format(loc)
    raise ValueError(f"source {src!r} does not exist (looked for a file or directory at {loc.uri})")


def _file_format(loc: Location, src: str) -> str:
    name = loc.name.lower()
    if name.endswith(JSON_SUFFIXES):
        kind = lhotse.manifest_kind(lhotse.first_record(loc))
        return "lhotse" if kind in ("cuts", "recordings") else "jsonl"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if is_audio_name(name):
        return "dir"
    raise ValueError(
        f"cannot tell the layout of {src!r}: a source file must be a manifest "
        f"({', '.join(JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES)}) or an audio file "
        f"({', '.join(AUDIO_EXTENSIONS)}); pass fmt= to choose a layout"
    )


def _directory_format(loc: Location) -> str:
    if loc.child(kaldi.WAV_SCP).is_file():
        return "kaldi"
    found = lhotse.find_manifests(loc, limit=DETECT_MAX_JSON_FILES)
    if found["cuts"] or found["recordings"]:
        return "lhotse"
    return "dir"


def _root(src: str, fmt: str, **fs_options: Any) -> Location:
    """The directory a listing is relative to: `src` itself when it is a directory of a
    non-manifest layout, the base directory of a glob, else the directory holding `src`."""
    if is_glob(src):
        return Location.from_uri(split_glob(src)[0], **fs_options)
    loc = Location.from_uri(src, **fs_options)
    if _layout(fmt).manifest or not loc.is_dir():
        loc = loc.parent
    return loc


def default_corpus(src: str, fmt: str, **fs_options: Any) -> str:
    """The name of the source's root directory (see `_root`)."""
    loc = _root(src, fmt, **fs_options)
    if is_glob(src):
        return loc.name or loc.path
    return loc.name or posixpath.basename(loc.path.rstrip("/")) or loc.path


def source_root(src: str, fmt: str, **fs_options: Any) -> str:
    """The URI that a listing's keys are relative to (items.source_key), see `_root`. Moving
    the corpus moves its root with it."""
    return _root(src, fmt, **fs_options).uri


def _layout(fmt: str) -> Layout:
    if fmt not in LAYOUTS:
        raise ValueError(f"format {fmt!r}: choose one of auto, {', '.join(LAYOUTS)}")
    return LAYOUTS[fmt]


def list_sources(
    src: str,
    fmt: str = "auto",
    *,
    corpus: str | None = None,
    task: str | None = None,
    check_exists: bool = True,
    original_uri: Callable[[str], str] | None = None,
    emotion_map: Mapping[str, str] | None = None,
    ignored: ColumnTally | None = None,
    **fs_options: Any,
) -> Iterator[SourceItem | dict[str, Any]]:
    """Stream what `src` holds: a `SourceItem` per audio file, a quarantine row per refusal.

    `corpus` (default: the source directory's name, or a manifest row's `corpus` column) and
    `task` (default: a manifest row's `task`) given here override what the source says.
    `fs_options` go to the filesystem (e.g. `endpoint_override=` for S3). `original_uri` maps
    a URI outside the source's root back to where it was first ingested (the build's
    `SourceRoots.unresolve`), so that its key survives a move. `emotion_map` (lower-cased value
    -> schemas.labels vocabulary word) is the job's own emotion codes. `ignored`, when given,
    tallies the manifest columns (and Lhotse custom keys) the readers skip, as the listing is
    consumed.

    Not a generator itself: a bad `fmt` or an unreadable `src` raises here, at the call, and
    only the listing is lazy."""
    concrete = detect_format(src, **fs_options) if fmt == "auto" else fmt
    layout = _layout(concrete)
    ctx = ReadContext(
        default_corpus=default_corpus(src, concrete, **fs_options),
        corpus=corpus,
        task=task,
        emotion_map=emotion_map,
        ignored=ignored if ignored is not None else ColumnTally(),
    )
    keyer = Keyer(
        root=source_root(src, concrete, **fs_options),
        corpus=ctx.corpus_for(),
        original=original_uri,
    )
    return settle(layout.read(src, ctx, **fs_options), check_exists=check_exists, keyer=keyer)
