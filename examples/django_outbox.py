"""Publish if and only if the transaction commits: Django and livegate's PostgreSQL outbox.

The row that asks livegate to publish is inserted in the same transaction as the change it
announces. If the transaction rolls back, nothing is published; once it commits, a livegate
instance (with ``persistence.dsn`` on this database) runs the command, at least once, in
order per partition. Run ``livegate migrate`` once to create ``<schema>.outbox``.

In a Django view or service::

    from django.db import connection, transaction
    from examples.django_outbox import enqueue_publish

    def mark_paid(order):
        with transaction.atomic():
            order.state = "paid"
            order.save(update_fields=["state"])
            with connection.cursor() as cursor:
                enqueue_publish(cursor, f"orders:{order.pk}", {"order": order.pk, "state": "paid"},
                                idempotency_key=f"order-{order.pk}-paid")

The alternative without the outbox, ``transaction.on_commit(lambda: SyncPublisher...publish(...))``,
publishes after the commit too, but loses the publication if the process dies in between.

``enqueue_publish`` takes any DB-API cursor that uses the ``%s`` parameter style (Django's,
psycopg's), so it does not need Django.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from typing import Any, Protocol

from livegate.publisher import api_body

#: The insert, for a DB-API cursor (``%s`` placeholders). ``{schema}`` is ``persistence.schema``.
OUTBOX_INSERT = "INSERT INTO {schema}.outbox (method, payload, partition) VALUES (%s, %s::jsonb, %s)"

PARTITIONS = 16


class Cursor(Protocol):
    def execute(self, sql: str, params: Any = ...) -> Any: ...


def partition_of(channel: str, partitions: int = PARTITIONS) -> int:
    """The same partition for every publication of a channel, so they run in order."""
    return zlib.crc32(channel.encode()) % partitions


def enqueue_publish(cursor: Cursor, channel: str, data: Any, *, idempotency_key: str | None = None,
                    tags: Mapping[str, str] | None = None, schema: str = "livegate") -> None:
    """Insert a ``publish`` command into the outbox, inside the caller's transaction.

    ``data`` as for ``livegate.publisher``: a JSON-serializable value or bytes of JSON text.
    The outbox keeps the JSON value, not its text: ``payload`` is ``jsonb``, which reorders
    keys and drops whitespace and duplicate keys, so subscribers get the same value but not
    the same bytes (the HTTP API and the Redis doors pass JSON text through byte for byte).
    The idempotency key makes a command run twice (at-least-once) publish once."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", schema):
        raise ValueError(f"schema must be a plain SQL identifier, not {schema!r}")
    payload = api_body("publish", channel, data, idempotency_key=idempotency_key, tags=tags)
    cursor.execute(OUTBOX_INSERT.format(schema=schema), ("publish", payload.decode(), partition_of(channel)))
