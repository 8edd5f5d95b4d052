"""The `dir` layout: audio files in a directory tree, a glob, or one audio file.

Owns: walking a directory (recursively) or a glob (`/x/*.flac`, `s3://b/p/**/*.wav`) in sorted
order, and finding each audio file's transcript beside it.

Must not: open audio, or treat non-audio files as items (JSON annotations, RTTMs, READMEs...).

Order: depth first, entries of a directory by name where a subdirectory sorts as `name/`, which
is the order of the full paths sorted as strings. One directory is listed at a time, so memory
holds the largest directory, never the whole tree.

Transcripts, most specific first:
1. a sidecar `<stem>.txt` or `<stem>.lab` beside `<stem>.<audio-ext>`;
2. the directory's transcript table: a Kaldi-style file named `text` (`<utt-id> <text>` per
   line), else `text.tsv` (see `transcripts`). Its keys name audio files of that same directory
   by stem (`spk1_snt1`) or full name (`zh.wav`). A table none of whose keys names an audio file
   of the directory is not a transcript table and is ignored; once it is adopted, a key that
   names no audio file of the directory is quarantined as `missing_file`.
A transcript that is not UTF-8 (`bad_transcript_encoding`) or blank (`empty_transcript`)
quarantines its audio file: training on a file whose transcript was lost would teach silence.
A glob selects among audio files only: `/x/*` lists the audio in /x, not its text files.
Hidden entries (names starting with `.`) are skipped: macOS `._x.wav` resource forks and
`.cache/` directories hold no speech.

Nothing with an audio name is skipped silently: a directory named `x.wav` or a FIFO is
`not_a_file` (a directory is still walked), a symbolic link that loops is `symlink_loop`, one
that points at nothing `missing_file`, a name that is not UTF-8 `bad_filename`, a subdirectory
that cannot be listed `read_error`, and a sidecar transcript whose audio file is missing
(`ghost.txt` and no `ghost.<ext>`, in a directory whose audio files have sidecars; not under a
glob) `missing_file`. An audio
file that cannot be read is found when it is decoded (`read_error`), like an unreadable sidecar.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import pyarrow.fs as pafs

from minmo.io.fs import Location, Unlisted
from pipelines.ingest.items import SourceItem
from pipelines.ingest.layouts.common import Pending, ReadContext, Row, reject, with_transcript
from pipelines.ingest.layouts.transcripts import TABLE_NAMES, Entry, TextProblem, read_table
from pipelines.ingest.layouts.transcripts import transcript_of as _transcript_of
from schemas.quarantine import ReasonCode

AUDIO_EXTENSIONS = (
    ".wav",
    ".flac",
    ".ogg",
    ".opus",
    ".mp3",
    ".m4a",
    ".aac",
    ".webm",
    ".sph",
)
SIDECAR_EXTENSIONS = (".txt", ".lab")
GLOB_CHARS = "*?["


def is_audio_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def is_glob(src: str) -> bool:
    return any(c in src for c in GLOB_CHARS)


def split_glob(src: str) -> tuple[str, str]:
    """(`base`, `pattern`): the directory before the first glob character, and the rest."""
    first = min(src.index(c) for c in GLOB_CHARS if c in src)
    cut = src.rfind("/", 0, first)
    if cut < 0:
        return ".", src
    return src[:cut] or "/", src[cut + 1 :]


@dataclass(frozen=True)
class _Glob:
    """A glob over relative paths: `*`, `?` and `[...]` stay within a path component; a `**`
    component matches any number of components (zero included)."""

    parts: tuple[str, ...]

    def matches(self, rel: str) -> bool:
        return _match(self.parts, tuple(rel.split("/")))

    def may_enter(self, rel_dir: str) -> bool:
        return _may_prefix(self.parts, tuple(rel_dir.split("/")))


def _match(parts: tuple[str, ...], comps: tuple[str, ...]) -> bool:
    if not parts:
        return not comps
    if parts[0] == "**":
        return any(_match(parts[1:], comps[i:]) for i in range(len(comps) + 1))
    return bool(comps) and fnmatchcase(comps[0], parts[0]) and _match(parts[1:], comps[1:])


def _may_prefix(parts: tuple[str, ...], comps: tuple[str, ...]) -> bool:
    """Whether a path under the directory `comps` could still match `parts`."""
    if not comps:
        return True
    if not parts:
        return False
    if parts[0] == "**":
        return True
    if len(parts) == 1:  # the last pattern component names files, not directories to enter
        return False
    return fnmatchcase(comps[0], parts[0]) and _may_prefix(parts[1:], comps[1:])


def read(src: str, ctx: ReadContext, **fs_options: Any) -> Iterator[Pending | Row]:
    """Every audio file under `src` (directory, glob or single file) as a listed `Pending`."""
    if is_glob(src):
        base, pattern = split_glob(src)
        yield from _walk(
            Location.from_uri(base, **fs_options), "", _Glob(tuple(pattern.split("/"))), ctx
        )
        return
    root = Location.from_uri(src, **fs_options)
    if root.is_file():
        only = _Glob((_escape(root.name),))
        yield from _walk(root.parent, "", only, ctx)
        return
    yield from _walk(root, "", None, ctx)


def _escape(name: str) -> str:
    return "".join(f"[{c}]" if c in GLOB_CHARS else c for c in name)


def _walk(
    directory: Location, rel: str, glob: _Glob | None, ctx: ReadContext
) -> Iterator[Pending | Row]:
    try:
        listed, unlisted = directory.list_dir_checked()
    except OSError as err:
        if not rel:  # the source itself: no row can stand for it
            raise
        yield reject(directory.uri, ReasonCode.READ_ERROR, f"cannot list: {err}", rel)
        return
    infos = [i for i in listed if not i.base_name.startswith(".")]
    files = {i.base_name for i in infos if i.type == pafs.FileType.File}
    audio = sorted(n for n in files if is_audio_name(n))
    table, table_loc = _adopted_table(directory, files, audio)
    selected = 0
    entries: list[pafs.FileInfo | Unlisted] = [*infos, *unlisted]
    for entry in sorted(entries, key=_sort_key):
        name = entry.name if isinstance(entry, Unlisted) else entry.base_name
        child_rel = f"{rel}/{name}" if rel else name
        wanted = is_audio_name(name) and not name.startswith(".")
        wanted = wanted and (glob is None or glob.matches(child_rel))
        if isinstance(entry, Unlisted):
            if wanted:  # an audio name that lists as no file: say why, never skip it
                where = f"{directory.uri.rstrip('/')}/{name}"
                yield reject(where, entry.reason, entry.detail, posixpath.splitext(child_rel)[0])
        elif entry.type == pafs.FileType.Directory:
            if wanted:
                yield reject(
                    directory.child(name).uri,
                    ReasonCode.NOT_A_FILE,
                    "a directory with an audio file's name (its contents are listed as any "
                    "directory's)",
                    posixpath.splitext(child_rel)[0],
                )
            if glob is None or glob.may_enter(child_rel):
                yield from _walk(directory.child(name), child_rel, glob, ctx)
        elif name in audio and (glob is None or glob.matches(child_rel)):
            selected += 1
            yield _audio_item(directory, name, child_rel, files, table, ctx)
        elif wanted:  # a FIFO, socket or device with an audio name
            yield reject(
                directory.child(name).uri,
                ReasonCode.NOT_A_FILE,
                "not a regular file (a FIFO, socket or device)",
                posixpath.splitext(child_rel)[0],
            )
    if table_loc is not None and selected:  # a glob that picks nothing here leaves its table be
        yield from _table_orphans(table, audio, table_loc, directory)
    if glob is None and audio:
        yield from _sidecar_orphans(directory, rel, files, audio)


def _sort_key(entry: pafs.FileInfo | Unlisted) -> str:
    if isinstance(entry, Unlisted):
        return entry.name
    name = entry.base_name
    return name + "/" if entry.type == pafs.FileType.Directory else name


def _sidecar_orphans(
    directory: Location, rel: str, files: set[str], audio: list[str]
) -> Iterator[Row]:
    """A sidecar transcript (`<stem>.txt`, `<stem>.lab`) whose stem names none of the
    directory's audio files, in a directory whose audio carries sidecars: its audio is missing
    (`ghost.txt` without `ghost.wav`), so its text would be lost without a word. Where no audio
    file has a sidecar, a `.txt` is not a transcript (a README beside one long recording)."""
    stems = {posixpath.splitext(a)[0] for a in audio}
    if not any(f"{stem}{ext}" in files for stem in stems for ext in SIDECAR_EXTENSIONS):
        return
    for name in sorted(files):
        stem, ext = posixpath.splitext(name)
        if ext in SIDECAR_EXTENSIONS and stem not in stems:
            yield reject(
                directory.child(name).uri,
                ReasonCode.MISSING_FILE,
                f"transcript {name} has no audio file {stem}.<ext> beside it",
                f"{rel}/{stem}" if rel else stem,
            )


def _adopted_table(
    directory: Location, files: set[str], audio: list[str]
) -> tuple[dict[str, Entry], Location | None]:
    """The directory's transcript table when its keys name at least one of its audio files."""
    name = next((n for n in TABLE_NAMES if n in files), None)
    if name is None or not audio:
        return {}, None
    loc = directory.child(name)
    table = read_table(loc)
    keys = set(audio) | {posixpath.splitext(a)[0] for a in audio}
    if keys.isdisjoint(table):
        return {}, None
    return table, loc


def _audio_item(
    directory: Location,
    name: str,
    rel: str,
    files: set[str],
    table: dict[str, Entry],
    ctx: ReadContext,
) -> Pending | Row:
    loc = directory.child(name)
    stem = posixpath.splitext(name)[0]
    key = posixpath.splitext(rel)[0]
    entry = _transcript(directory, stem, files) or table.get(name) or table.get(stem)
    text = entry.text if entry is not None else None
    if isinstance(text, TextProblem):
        return reject(loc.uri, text.reason, text.detail, key)
    item = SourceItem(
        source_uri=loc.uri,
        corpus=ctx.corpus_for(),
        item_key=key,
        text=text,
        language=entry.language if entry is not None else None,
        speaker=entry.speaker if entry is not None else None,
        task=ctx.task_for(),
    )
    return Pending(with_transcript(item), [loc], listed=True)


def _transcript(directory: Location, stem: str, files: set[str]) -> Entry | None:
    """The sidecar transcript of `stem`, if one sits beside it."""
    for ext in SIDECAR_EXTENSIONS:
        if stem + ext in files:
            try:
                raw = directory.child(stem + ext).read_bytes()
            except OSError as err:  # e.g. permission denied: the audio's text is lost
                return Entry(TextProblem(ReasonCode.READ_ERROR, f"{stem + ext}: {err}"), 1)
            return Entry(_transcript_of(raw, stem + ext), 1)
    return None


def _table_orphans(
    table: dict[str, Entry], audio: list[str], table_loc: Location, directory: Location
) -> Iterator[Row]:
    named = set(audio) | {posixpath.splitext(a)[0] for a in audio}
    for key, entry in table.items():
        if key not in named:
            yield reject(
                table_loc.uri,
                ReasonCode.MISSING_FILE,
                f"{table_loc.name} line {entry.line}: no audio file named {key!r} "
                f"(or {key}.<ext>) in {directory.uri}",
                key,
            )
