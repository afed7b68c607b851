"""What the schema holds, read from the migration files: keyspaces, tables and views.

The Airflow trigger forms offer only these names (so nothing typed into a form reaches CQL or a
command line unchecked), and the view rebuild recreates a view from the DDL that created it.
Reading a handful of small files is cheap enough for DAG parse time; no server is asked.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from retail.errors import ConfigError
from retail.migrations import MIGRATIONS_DIR, OPS_KEYSPACE

_CREATE = re.compile(
    r"CREATE\s+(TABLE|MATERIALIZED\s+VIEW)\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\.(\w+)(.*?);",
    re.IGNORECASE | re.DOTALL,
)
_BASE = re.compile(r"\bFROM\s+(\w+)\.(\w+)", re.IGNORECASE)

# Tables the platform's own code creates outside include/cql (see retail.migrations).
OPS_TABLES = ("schema_migrations", "migration_lock")


@dataclass(frozen=True)
class View:
    keyspace: str
    name: str
    base_table: str
    ddl: str  # the CREATE MATERIALIZED VIEW statement, as the migration has it


@dataclass(frozen=True)
class Catalog:
    tables: dict[str, tuple[str, ...]]  # keyspace -> tables, in migration order
    views: dict[str, View]  # view name -> view

    @property
    def keyspaces(self) -> tuple[str, ...]:
        return tuple(self.tables)

    def tables_of(self, keyspace: str) -> tuple[str, ...]:
        try:
            return self.tables[keyspace]
        except KeyError:
            raise ConfigError(
                f"unknown keyspace {keyspace!r}; known: {', '.join(self.keyspaces)}"
            ) from None

    def view(self, name: str) -> View:
        try:
            return self.views[name]
        except KeyError:
            raise ConfigError(
                f"unknown materialized view {name!r}; known: {', '.join(self.views)}"
            ) from None


def read(directory: Path = MIGRATIONS_DIR) -> Catalog:
    """The keyspaces, tables and views that the migrations in ``directory`` create."""
    tables: dict[str, list[str]] = {}
    views: dict[str, View] = {}
    for path in sorted(directory.glob("V*.cql")):
        text = "\n".join(
            line for line in path.read_text().splitlines() if not line.strip().startswith("--")
        )
        for match in _CREATE.finditer(text):
            kind, keyspace, name, rest = match.groups()
            if kind.upper() == "TABLE":
                tables.setdefault(keyspace, []).append(name)
            else:
                base = _BASE.search(rest)
                if base is None:
                    raise ConfigError(f"{path.name}: view {name} has no FROM clause")
                views[name] = View(keyspace, name, base.group(2), match.group(0))
    tables.setdefault(OPS_KEYSPACE, []).extend(
        t for t in OPS_TABLES if t not in tables.get(OPS_KEYSPACE, [])
    )
    return Catalog({ks: tuple(names) for ks, names in tables.items()}, views)


@functools.cache
def catalog() -> Catalog:
    """The catalogue of the repo's migrations (read once per process)."""
    return read()
