"""Versioned SQL migrations: ``migrations/NNN_name.sql``, applied in order by ``livegate migrate``.

Every run takes a session advisory lock (so concurrent runs from several hosts apply each
file once), creates the schema and ``schema_migrations`` when missing, and applies each
pending file in its own transaction with ``search_path`` set to the schema. Applying twice
is a no-op. The server refuses to start when the schema is older than ``LATEST``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

import asyncpg

from livegate.errors import LivegateError

__all__ = ["Migration", "MIGRATIONS", "LATEST", "migrate", "status", "schema_version", "SchemaTooOld", "quote_ident"]

_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
LOCK_KEY = 0x6C697665  # "live": first key of livegate's advisory locks


class SchemaTooOld(LivegateError):
    pass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def _load() -> list[Migration]:
    folder = resources.files("livegate.persistence").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 001, 002, ... without gaps: {versions}")
    return found


MIGRATIONS = _load()
LATEST = MIGRATIONS[-1].version


def quote_ident(name: str) -> str:
    """Schema names are validated in config (``[a-z_][a-z0-9_]*``); quoting is belt and braces."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"invalid identifier {name!r}")
    return '"' + name + '"'


async def _connect(dsn: str, timeout: float) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=timeout)


async def schema_version(conn: asyncpg.Connection, schema: str) -> int:
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{quote_ident(schema)}.schema_migrations")
    if not exists:
        return 0
    return int(await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {quote_ident(schema)}.schema_migrations"))


async def migrate(dsn: str, schema: str, *, timeout: float = 10.0) -> list[Migration]:
    """Apply pending migrations; returns those applied by this call."""
    conn = await _connect(dsn, timeout)
    q = quote_ident(schema)
    applied_now: list[Migration] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", LOCK_KEY, schema)
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {q}.schema_migrations ("
                "version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            applied = {r["version"] for r in await conn.fetch(f"SELECT version FROM {q}.schema_migrations")}
            for migration in MIGRATIONS:
                if migration.version in applied:
                    continue
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL search_path TO {q}")
                    await conn.execute(migration.sql)
                    await conn.execute(f"INSERT INTO {q}.schema_migrations (version, name) VALUES ($1, $2)",
                                       migration.version, migration.name)
                applied_now.append(migration)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", LOCK_KEY, schema)
    finally:
        await conn.close()
    return applied_now


async def status(dsn: str, schema: str, *, timeout: float = 10.0) -> list[tuple[Migration, datetime | None]]:
    conn = await _connect(dsn, timeout)
    try:
        applied: dict[int, datetime] = {}
        if await schema_version(conn, schema) or await conn.fetchval(
                "SELECT to_regclass($1) IS NOT NULL", f"{quote_ident(schema)}.schema_migrations"):
            rows = await conn.fetch(f"SELECT version, applied_at FROM {quote_ident(schema)}.schema_migrations")
            applied = {r["version"]: r["applied_at"] for r in rows}
        return [(m, applied.get(m.version)) for m in MIGRATIONS]
    finally:
        await conn.close()
