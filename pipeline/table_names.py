"""database.table_prefix: the one place that knows which table names azamrecon owns and how a prefix applies.

Beside another application's tables (a Django portal's, docs/deploy.md "Beside other tables") every table
azamrecon creates, the Alembic version table included, is named prefix + name. The code keeps writing the plain
names (the ORM models, the raw SQL, the migrations and their triggers): make_engine installs `rewriter(prefix)` on
the engine, and pipeline.store.driver applies it to its own DBAPI statements, so each owned name standing as a
whole word in a statement's text gets the prefix before the driver sees it. Word boundaries leave alone the names
that merely contain a table's name (`ix_donations_status`, `donations_rewritten`, `staged_donations`: `_` is a
word character), and the portal's tables are never owned. Index, constraint and trigger names keep their plain
names: on MariaDB only foreign keys and triggers share one namespace per database, on SQLite indexes and triggers.

What does not pass through a statement's text honours the prefix through `prefixed` and `prefix_of`: names
read back from the database (an inspector's table list), Alembic's version table, `init`'s collision check.
Rewriting is idempotent: a prefixed name is never itself an owned name, so a statement that already names
`azamrecon_donations` (built from reflected names) passes unchanged.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Callable

from sqlalchemy.engine import Connection, Engine

from pipeline.models import metadata

VERSION_TABLE = "alembic_version"

_PREFIXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # engine -> its table_prefix, when not ""


def owned_names() -> frozenset[str]:
    """The plain name of every table azamrecon creates, the version table included."""
    return frozenset(metadata.tables) | {VERSION_TABLE}


def prefixed(prefix: str, name: str) -> str:
    return prefix + name


def register(engine: Engine, prefix: str) -> None:
    """Called by pipeline.db.make_engine: the engine's tables carry this prefix."""
    if prefix:
        _PREFIXES[engine] = prefix


def prefix_of(bind: Engine | Connection) -> str:
    """The table prefix of an engine made by make_engine (or of a connection of one); "" for none."""
    engine = bind.engine if isinstance(bind, Connection) else bind
    return _PREFIXES.get(engine, "")


def _unchanged(statement: str) -> str:
    return statement


@functools.cache
def rewriter(prefix: str) -> Callable[[str], str]:
    """statement -> the statement with `prefix` before every owned table name standing as a whole word.
    Cached per statement text: statements repeat, so the cost is one dict lookup each."""
    if not prefix:
        return _unchanged
    pattern = re.compile(r"\b(" + "|".join(sorted(owned_names(), key=len, reverse=True)) + r")\b")

    @functools.lru_cache(maxsize=8192)
    def rewrite(statement: str) -> str:
        return pattern.sub(lambda match: prefixed(prefix, match.group(1)), statement)

    return rewrite
