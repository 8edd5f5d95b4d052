"""A versioned Arrow contract between two steps, and the check every writer runs.

Owns: the `TableContract` type and its validation. Must not: know about any particular table;
each table lives in its own module.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc


class SchemaError(ValueError):
    """A table does not match its contract; the message names the table and the column."""


@dataclass(frozen=True)
class TableContract:
    """One table's schema, version and the value rules a type alone cannot express.

    `enums` maps a string column to the closed set of values it may hold; `non_negative` lists
    numeric columns that must be >= 0 where not null; `required` columns must have no nulls.
    """

    name: str
    version: int
    schema: pa.Schema
    required: tuple[str, ...] = ()
    enums: Mapping[str, type[enum.Enum]] = field(default_factory=dict)
    non_negative: tuple[str, ...] = ()

    @property
    def metadata(self) -> dict[bytes, bytes]:
        """Key/values stamped into every Parquet file, so readers can check what they got."""
        return {b"minmo.table": self.name.encode(), b"minmo.version": str(self.version).encode()}

    def empty(self) -> pa.Table:
        return self.schema.empty_table().replace_schema_metadata(self.metadata)

    def from_rows(self, rows: Sequence[Mapping[str, object]]) -> pa.Table:
        """Build a validated table from dict rows; missing nullable columns become null."""
        columns = {f.name: [row.get(f.name) for row in rows] for f in self.schema}
        table = pa.Table.from_pydict(columns, schema=self.schema)
        return self.validate(table)

    def conform(self, table: pa.Table) -> pa.Table:
        """Reorder and cast a table with the right columns to the exact schema, then validate."""
        missing = [n for n in self.schema.names if n not in table.column_names]
        extra = [n for n in table.column_names if n not in self.schema.names]
        if missing or extra:
            raise SchemaError(
                f"{self.name} v{self.version}: missing columns {missing}, unexpected columns {extra}"
            )
        table = table.select(self.schema.names)
        try:
            table = table.cast(self.schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(f"{self.name} v{self.version}: cannot cast: {exc}") from exc
        return self.validate(table)

    def validate(self, table: pa.Table) -> pa.Table:
        """Raise SchemaError unless `table` keeps every rule of this contract; return it stamped."""
        if not table.schema.equals(self.schema, check_metadata=False):
            raise SchemaError(
                f"{self.name} v{self.version}: schema differs.\nexpected:\n{self.schema}\n"
                f"got:\n{table.schema}"
            )
        for name in self.required:
            nulls = table.column(name).null_count
            if nulls:
                raise SchemaError(f"{self.name}.{name}: {nulls} null value(s) in a required column")
        for name, allowed in self.enums.items():
            values = {v for v in pc.unique(table.column(name)).to_pylist() if v is not None}
            bad = values - {m.value for m in allowed}
            if bad:
                raise SchemaError(
                    f"{self.name}.{name}: values {sorted(bad)} are not in {allowed.__name__} "
                    f"({sorted(m.value for m in allowed)})"
                )
        for name in self.non_negative:
            column = table.column(name)
            if len(column) and column.null_count < len(column):
                smallest = pc.min(column).as_py()
                if smallest is not None and smallest < 0:
                    raise SchemaError(f"{self.name}.{name}: negative value {smallest}")
        return table.replace_schema_metadata(self.metadata)
