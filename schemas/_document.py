"""Validation of a versioned JSON document (stats.json, eval.json) against its JSON Schema: the
one place the version check and the error's wording live."""

from __future__ import annotations

from typing import Any


def validate_document(
    doc: Any,
    schema: dict[str, Any],
    version: int,
    name: str,
    rerun: str,
    error: type[ValueError],
) -> Any:
    """Raise `error` unless `doc` is version `version` and keeps `schema`; return it unchanged.

    `name` is the file's name in messages (`stats.json`), `rerun` what remakes it. A schema error
    names the path inside the document of the first problem."""
    import jsonschema

    if isinstance(doc, dict) and doc.get("version") != version:
        raise error(
            f"{name} version {doc.get('version')!r}, this checkout reads version {version}: {rerun}"
        )
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(doc),
        key=lambda e: list(e.absolute_path),
    )
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top)"
        raise error(f"{name} v{version}: at {where}: {first.message}")
    return doc
