"""The config layer every step's and the trainer's config dataclass stands on.

Owns: the one error type of a wrong config (`ConfigError`), the unknown-key check that names the
nearest valid key, building a config dataclass from a YAML mapping (nested sections become their
typed dataclasses, so a typo in a nested key is caught too), the field documentation that the
CLI turns into `--help`, and the one definition of `storage_options`.

Field documentation follows one convention, the attribute docstring under the field (as in
torchtitan's JobConfig):

    max_segment_s: float = 30.0
    "VAD segments are cut to at most this long."  (a docstring in triple quotes)

It must not import `pipelines`, the model or Ray: it sits below all of them.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

C = TypeVar("C")

StorageOptions = dict[str, Any]
"""pyarrow filesystem options (minmo.io.fs.open_filesystem), e.g.
{"endpoint_override": "http://127.0.0.1:9000"}; credentials come from the environment."""

STORAGE_OPTIONS_DOC = (
    "pyarrow filesystem options for object-store paths (JSON on the command line), e.g. "
    '{"endpoint_override": "http://127.0.0.1:9000"}; credentials come from the environment'
)


class ConfigError(ValueError):
    """A config (job spec, training spec, command line) is wrong; the message says where and
    how to fix it. A ValueError, so callers that catch bad values catch this too."""


def storage_options_field() -> Any:
    """The one definition of every config's `storage_options` field (an empty mapping: the
    local filesystem, or the environment's object-store credentials)."""
    return dataclasses.field(default_factory=dict, metadata={"doc": STORAGE_OPTIONS_DOC})


def section_field(schema: type) -> Any:
    """A nested YAML section typed by the dataclass `schema`: its keys are checked against
    `schema`'s fields (nested ones too, naming the nearest valid key), the command line reaches
    each as `--section.key`, and `field_docs(schema)` documents them; the value stays the
    mapping of the keys given, so that a step can tell a key set from a default left alone
    (e.g. the samples' seed falls back to the shards step's seed only when not given)."""
    return dataclasses.field(default_factory=dict, metadata={"section": schema})


def section_schema(f: dataclasses.Field) -> type | None:
    """The dataclass a `section_field` declares, else None."""
    return f.metadata.get("section")


def check_section(schema: type, data: Mapping[str, Any], where: str) -> None:
    """ConfigError for the first key of `data`, at any depth, that `schema` does not have."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    check_keys(where, data, fields)
    types = field_types(schema)
    for key, value in data.items():
        inner = nested_dataclass(types[key]) or section_schema(fields[key])
        if inner is not None and isinstance(value, Mapping):
            check_section(inner, value, f"{where}.{key}")


def nearest(key: str, valid: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the closest valid key, or '' when nothing is close."""
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f' (did you mean "{match[0]}"?)' if match else ""


def check_keys(where: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """ConfigError for the first key of `given` not in `valid`, naming the nearest valid one."""
    valid = sorted(valid)
    for key in given:
        if key not in valid:
            raise ConfigError(
                f'{where}: unknown key "{key}"{nearest(key, valid)}; valid keys: {", ".join(valid)}'
            )


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Each field's resolved type (the modules use `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def nested_dataclass(tp: Any) -> type | None:
    """The dataclass a field of type `tp` holds (`X` or `X | None`), else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1 and dataclasses.is_dataclass(args[0]) and typing.get_origin(tp) is not list:
        return args[0]
    return None


def from_mapping(cls: type[C], data: Mapping[str, Any] | None, where: str) -> C:
    """`cls` built from a YAML mapping: unknown keys are a ConfigError naming the nearest valid
    one, a nested mapping becomes the field's own dataclass (checked the same way), and what
    the dataclass's `__post_init__` refuses is reported with `where` in front."""
    data = dict(data or {})
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(where, data, fields)
    types = field_types(cls)
    for name, value in data.items():
        nested = nested_dataclass(types[name])
        if nested is not None and isinstance(value, Mapping):
            data[name] = from_mapping(nested, value, f"{where}.{name}")
        schema = section_schema(fields[name])
        if schema is not None and isinstance(value, Mapping):
            check_section(schema, value, f"{where}.{name}")
    try:
        return cls(**data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:  # a missing key, or __post_init__'s refusal
        raise ConfigError(f"{where}: {exc}") from exc


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation: the attribute docstring under it (in `cls` or a base), else
    the shared definition's own (`storage_options_field`), else ''."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # a class built at run time has no source to read
            continue
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        for node, after in zip(body.body, body.body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return {f.name: docs.get(f.name) or f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, section by section (a nested mapping merges, a value replaces):
    how a command line goes over a YAML section, and a job's keys over a training spec."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
