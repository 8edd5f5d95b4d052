"""Command-line flags generated from config dataclasses (torchtitan's JobConfig is the model).

Every field becomes a flag named after it (`max_segment_s` -> `--max-segment-s`), documented by
the field's docstring (minmo.config.field_docs): a bool is `--x/--no-x`, a list takes several
values (and the flag repeats), a tuple its fixed count, a mapping JSON, a nested dataclass one
flag per field (`--samples.hotwords 3`). Optional values take `none`. No flag has a default of
its own (argparse.SUPPRESS): what the command line leaves out is left to the YAML section, and
what that leaves out to the dataclass, so the precedence is CLI > YAML > defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from minmo.config import (
    ConfigError,
    field_docs,
    field_types,
    merge,
    nested_dataclass,
    section_schema,
)

NONE_WORDS = ("none", "null")


def flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _scalar(tp: Any) -> tuple[Callable[[str], Any], bool]:
    """(the argparse `type` for `tp`, whether None is allowed)."""
    args = typing.get_args(tp)
    optional = (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args
    if optional:
        (tp,) = [a for a in args if a is not type(None)]
    base = tp if tp in (int, float, str) else str
    if not optional:
        return base, False

    def parse(value: str) -> Any:
        return None if value.lower() in NONE_WORDS else base(value)

    parse.__name__ = base.__name__  # argparse names the type in its "invalid value" error
    return parse, True


def _unwrap(tp: Any) -> Any:
    """`X` for `X | None`; any other type as it is."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def _kind(tp: Any) -> str:
    """bool, list, tuple, dict or scalar, looking through `X | None`."""
    tp = _unwrap(tp)
    if tp is bool:
        return "bool"
    origin = typing.get_origin(tp) or tp
    return {list: "list", tuple: "tuple", dict: "dict"}.get(origin, "scalar")


def _argument(tp: Any, default: Any) -> tuple[dict[str, Any], str]:
    """(add_argument keyword arguments, a note for the help) for a field of type `tp`."""
    kind = _kind(tp)
    if kind == "bool":
        return {"action": argparse.BooleanOptionalAction}, ""
    if kind == "list":
        (item,) = typing.get_args(_unwrap(tp)) or (str,)
        return {"action": "extend", "nargs": "*", "type": _scalar(item)[0]}, "several values"
    if kind == "tuple":
        items = typing.get_args(tp)
        return {"nargs": len(items), "type": _scalar(items[0])[0]}, ""
    if kind == "dict":
        return {"metavar": "JSON"}, "JSON object"
    parse, optional = _scalar(tp)
    return {"type": parse}, "none allowed" if optional else ""


def _help(doc: str, default: Any, note: str) -> str:
    shown = "" if default is dataclasses.MISSING else f"default: {default!r}"
    extra = "; ".join(s for s in (note, shown) if s)
    # argparse formats help with %: a literal percent sign must be doubled.
    return (f"{doc} ({extra})" if extra else doc).replace("%", "%%")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    prefix: str = "",
    positional: tuple[str, ...] = (),
    choices: Mapping[str, tuple[str, ...]] | None = None,
    flag_aliases: Mapping[str, tuple[str, ...]] | None = None,
) -> list[str]:
    """Add one argument per field of `cls` (recursing into nested dataclasses); returns the
    dests of the mapping fields, whose JSON `parse_json_fields` turns into dicts."""
    docs, hints = field_docs(cls), field_types(cls)
    json_dests = []
    for f in dataclasses.fields(cls):
        dest = prefix + f.name
        nested = nested_dataclass(hints[f.name]) or section_schema(f)
        if nested is not None:
            # The whole section as JSON (`--mixture '{"stage1": {"asr": 0.5}}'`), and a flag
            # per key; the keys given one by one go over the JSON.
            parser.add_argument(
                flag_name(dest),
                dest=dest,
                default=argparse.SUPPRESS,
                metavar="JSON",
                help=_help(docs.get(f.name, ""), dataclasses.MISSING, "JSON object"),
            )
            json_dests.append(dest)
            json_dests += add_config_flags(parser, nested, prefix=f"{dest}.")
            continue
        kwargs, note = _argument(hints[f.name], _default(f))
        if (choices or {}).get(f.name):
            kwargs["choices"] = choices[f.name]  # type: ignore[index]
        help_text = _help(docs.get(f.name, ""), _default(f), note)
        if f.name in positional:
            if kwargs.get("action") == "extend":
                kwargs = {"nargs": "*", "type": kwargs["type"]}
            parser.add_argument(dest, default=argparse.SUPPRESS, help=help_text, **kwargs)
            continue
        names = [flag_name(dest), *(flag_aliases or {}).get(f.name, ())]
        parser.add_argument(*names, dest=dest, default=argparse.SUPPRESS, help=help_text, **kwargs)
        if _kind(hints[f.name]) == "dict":
            json_dests.append(dest)
    return json_dests


def parse_json_fields(values: dict[str, Any], json_dests: list[str]) -> None:
    """The JSON of each mapping flag given, parsed in place; bad JSON is a ConfigError naming
    the flag (the user's to fix, said without a traceback)."""
    for dest in json_dests:
        if values.get(dest) is None or isinstance(values[dest], dict):
            continue
        flag = flag_name(dest)
        try:
            parsed = json.loads(values[dest])
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{flag} is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f'{flag} must be a JSON object, e.g. \'{{"region": "eu-west-1"}}\'')
        values[dest] = parsed


def nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"samples.hotwords": 3} -> {"samples": {"hotwords": 3}}: dotted dests as YAML sections
    (a section given whole, as JSON, under the keys given one by one)."""
    out: dict[str, Any] = {}
    for dest, value in sorted(values.items(), key=lambda item: item[0].count(".")):
        *sections, key = dest.split(".")
        target = out
        for section in sections:
            target = target.setdefault(section, {})
        target[key] = merge(target[key], value) if isinstance(target.get(key), dict) else value
    return out
