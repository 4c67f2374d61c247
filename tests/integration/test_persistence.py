"""PostgreSQL persistence against the real server: migrations, archive, recovery beyond the
engine's history, the outbox, and behaviour while PostgreSQL is unreachable.
Each test uses a schema of its own."""

from __future__ import annotations

import asyncio
import sys
import uuid

import asyncpg
import orjson
import pytest
from centrifuge import StreamPosition
from conftest import DATABASE_URL, REDIS_URL, dur, scaled, token, unique_prefix
from procs import Balancer, free_port
from sdk import sdk_client, sdk_subscription

from livegate.channels.broker import HistoryOptions
from livegate.persistence.migrate import LATEST, MIGRATIONS, migrate, status
from livegate.protocol.types import StreamPosition as Position

ARCHIVED = {"name": "ar", "archive": True, "history_size": 5, "history_ttl": "10m", "force_recovery": True,
            "allow_subscribe_for_client": True, "allow_history_for_subscriber": True}


@pytest.fixture
async def schema():
    name = "lgt_" + uuid.uuid4().hex[:10]
    yield name
    conn = await asyncpg.connect(DATABASE_URL)
    await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    await conn.close()


@pytest.fixture
async def db():
    conn = await asyncpg.connect(DATABASE_URL)  # fails (never skips) without PostgreSQL
    yield conn
    await conn.close()


def persistence_config(schema: str, dsn: str = DATABASE_URL, **extra):
    return {"persistence": {"dsn": dsn, "schema": schema, "archive_flush_interval": "0.05s", **extra},
            "channel": {"namespaces": [ARCHIVED, {"name": "chat", "allow_subscribe_for_client": True,
                                                  "history_size": 100, "history_ttl": "10m", "force_recovery": True}]}}


async def run_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livegate.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode, out.decode()


async def test_migrations_fresh_repeated_and_status(schema, db, tmp_path):
    assert [m.version for m in await migrate(DATABASE_URL, schema)] == [m.version for m in MIGRATIONS]
    assert await migrate(DATABASE_URL, schema) == []
    tables = {r["table_name"] for r in await db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema)}
    assert {"schema_migrations", "publications", "outbox", "outbox_dead"} <= tables
    rows = await status(DATABASE_URL, schema)
    assert all(applied is not None for _, applied in rows)
    config = tmp_path / "c.toml"
    config.write_text(f'[persistence]\ndsn = "{DATABASE_URL}"\nschema = "{schema}"\n')
    code, out = await run_cli("migrate", "--config", str(config), "--status")
    assert code == 0 and "001 initial" in out and "applied" in out
    code, out = await run_cli("migrate", "--config", str(config))
    assert code == 0 and "up to date" in out


async def test_concurrent_migrations_from_two_processes(schema, db, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'[persistence]\ndsn = "{DATABASE_URL}"\nschema = "{schema}"\n')
    results = await asyncio.gather(*(run_cli("migrate", "--config", str(config)) for _ in range(3)))
    assert all(code == 0 for code, _ in results), results
    assert sum(out.count("applied 001") for _, out in results) == 1
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.schema_migrations") == LATEST


async def test_server_refuses_an_old_schema(schema, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'[http_server]\nport = {free_port()}\n[http_api]\nport = {free_port()}\n'
                      f'[persistence]\ndsn = "{DATABASE_URL}"\nschema = "{schema}"\n')
    code, out = await run_cli("serve", "--config", str(config))
    assert code == 1 and "livegate migrate" in out and "Traceback" not in out
    code, out = await run_cli("migrate", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "cannot read config file" in out


async def test_archive_writes_idempotently(schema, db, start_server):
    await migrate(DATABASE_URL, schema)
    running = await start_server(persistence_config(schema))
    for n in range(12):
        await running.node.publish("ar:room", orjson.dumps({"n": n}), tags={"t": "1"})
    await running.node.publish("chat:not-archived", b'{"x":1}')
    archive = running.server.persistence.archive
    async with asyncio.timeout(scaled(5)):
        while archive.written < 12:
            await asyncio.sleep(0.02)
    rows = await db.fetch(f'SELECT channel, "offset", data, tags FROM {schema}.publications ORDER BY "offset"')
    assert [(r["channel"], r["offset"]) for r in rows] == [("ar:room", n) for n in range(1, 13)]
    assert orjson.loads(rows[0]["data"]) == {"n": 0} and orjson.loads(rows[0]["tags"]) == {"t": "1"}
    # the same (channel, epoch, offset) again is ignored, not an error
    epoch = (await db.fetchrow(f"SELECT epoch FROM {schema}.publications LIMIT 1"))["epoch"]
    archive.add("ar:room", epoch, 3, b'{"dup":true}', None, None)
    async with asyncio.timeout(scaled(5)):
        while archive.buffer:
            await asyncio.sleep(0.02)
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.publications") == 12
    assert orjson.loads(await db.fetchval(f'SELECT data FROM {schema}.publications WHERE "offset" = 3')) == {"n": 2}


@pytest.mark.parametrize("engine", ["memory", "redis"])
async def test_recovery_reaches_into_the_archive(schema, start_server, engine):
    await migrate(DATABASE_URL, schema)
    override = persistence_config(schema)
    if engine == "redis":
        override["engine"] = {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": unique_prefix()}}
    running = await start_server(override)
    first, fev = sdk_client(running.url, token("alice"))
    sub, events = sdk_subscription(first, "ar:long")
    await first.connect()
    await sub.subscribe()
    subscribed = (await events.wait("subscribed"))[0]
    for n in range(3):
        await running.node.publish("ar:long", orjson.dumps({"n": n}))
    pubs = await events.wait("publication", 3)
    position = StreamPosition(offset=pubs[-1].pub.offset, epoch=subscribed.stream_position.epoch)
    await first.disconnect()
    # Away for longer than the engine keeps history: 20 publications, the engine keeps 5.
    for n in range(3, 23):
        await running.node.publish("ar:long", orjson.dumps({"n": n}))
    archive = running.server.persistence.archive
    async with asyncio.timeout(scaled(5)):
        while archive.written < 23:
            await asyncio.sleep(0.02)
    engine_only = await running.node.broker.history("ar:long", HistoryOptions(limit=100, since=Position(3, "")))
    assert len(engine_only.publications) == 5  # the engine alone could not recover

    async def saved_state(channel):
        return position

    second, _ = sdk_client(running.url, token("alice"))
    sub2, events2 = sdk_subscription(second, "ar:long", get_state=saved_state)
    await second.connect()
    await sub2.subscribe()
    ctx = (await events2.wait("subscribed"))[0]
    assert ctx.was_recovering and ctx.recovered
    recovered = await events2.wait("publication", 20)
    assert [p.pub.data["n"] for p in recovered] == list(range(3, 23))
    assert [p.pub.offset for p in recovered] == list(range(4, 24))
    # history pages through the archive as well
    hist = await sub2.history(limit=8, since=StreamPosition(offset=4, epoch=position.epoch))
    assert [p.offset for p in hist.publications] == list(range(5, 13))
    await second.disconnect()


async def test_outbox_with_two_instances(schema, db, start_server):
    await migrate(DATABASE_URL, schema)
    override = persistence_config(schema, outbox_poll_interval="0.2s")
    override["engine"] = {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": unique_prefix()}}
    a = await start_server(override)
    b = await start_server(override)
    client, _ = sdk_client(a.url, token("alice"))
    await client.connect()
    subs = []
    for p in range(4):
        sub, events = sdk_subscription(client, f"chat:part{p}")
        await sub.subscribe()
        await events.wait("subscribed")
        subs.append(events)
    async with db.transaction():  # the backend's own transaction
        for seq in range(50):
            for p in range(4):
                await db.execute(f"INSERT INTO {schema}.outbox (method, payload, partition) VALUES ($1, $2, $3)",
                                 "publish", orjson.dumps({"channel": f"chat:part{p}", "data": {"seq": seq}}).decode(), p)
    for p, events in enumerate(subs):
        pubs = await events.wait("publication", 50, timeout=15)
        assert [x.pub.data["seq"] for x in pubs] == list(range(50)), f"partition {p} out of order or duplicated"
    # None twice: a row executed again would come before a row written after them all, in
    # its partition (executed in order) and on its channel (delivered in order).
    for p in range(4):
        await db.execute(f"INSERT INTO {schema}.outbox (method, payload, partition) VALUES ($1, $2, $3)",
                         "publish", orjson.dumps({"channel": f"chat:part{p}", "data": {"seq": "marker"}}).decode(), p)
    for p, events in enumerate(subs):
        pubs = await events.wait("publication", 51, timeout=15)
        assert [x.pub.data["seq"] for x in pubs] == [*range(50), "marker"], f"partition {p} duplicated"
    async with asyncio.timeout(scaled(5)):  # the batch's transaction (and its DELETE) commits after the publish
        while await db.fetchval(f"SELECT count(*) FROM {schema}.outbox") != 0:
            await asyncio.sleep(0.02)
    executed = [a.server.persistence.outbox.executed, b.server.persistence.outbox.executed]
    assert sum(executed) == 204
    await client.disconnect()


async def test_outbox_dead_letters_invalid_rows(schema, db, start_server):
    await migrate(DATABASE_URL, schema)
    running = await start_server(persistence_config(schema, outbox_poll_interval="0.2s"))
    client, _ = sdk_client(running.url, token("alice"))
    sub, events = sdk_subscription(client, "chat:dl")
    await client.connect()
    await sub.subscribe()
    await events.wait("subscribed")
    too_big = '{"channel": "chat:dl", "data": "%s"}' % ("x" * 70000)  # over channel.max_publication_size
    bad = [("frobnicate", "{}"), ("publish", '{"channel": 5}'), ("publish", '{"channel": "nope:x", "data": 1}'),
           ("publish", "[1, 2]"), ("publish", too_big)]
    for method, payload in bad:
        await db.execute(f"INSERT INTO {schema}.outbox (method, payload) VALUES ($1, $2)", method, payload)
    await db.execute(f"INSERT INTO {schema}.outbox (method, payload) VALUES ('publish', $1)",
                     '{"channel": "chat:dl", "data": {"ok": true}}')
    (pub,) = await events.wait("publication", timeout=10)
    assert pub.pub.data == {"ok": True}
    async with asyncio.timeout(scaled(5)):
        while await db.fetchval(f"SELECT count(*) FROM {schema}.outbox_dead") < 5:
            await asyncio.sleep(0.05)
    errors = [r["error"] for r in await db.fetch(f"SELECT error FROM {schema}.outbox_dead ORDER BY id")]
    assert errors[0].startswith("104") and errors[1].startswith("107") and errors[2].startswith("102")
    assert errors[3].startswith("107")
    assert errors[4].startswith("107") and "max_publication_size" in errors[4]
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.outbox") == 0
    await client.disconnect()


async def test_postgres_unreachable_fan_out_unaffected_archive_bounded(schema, start_server):
    from urllib.parse import urlsplit
    await migrate(DATABASE_URL, schema)
    target = urlsplit(DATABASE_URL)
    proxy = Balancer([target.port or 5432])
    await proxy.start()
    dsn = DATABASE_URL.replace(f"{target.hostname}:{target.port or 5432}", f"127.0.0.1:{proxy.port}")
    running = await start_server(persistence_config(schema, dsn=dsn, archive_buffer_size=30, command_timeout=dur(1),
                                                    connect_timeout=dur(1)))
    client, _ = sdk_client(running.url, token("alice"))
    sub, events = sdk_subscription(client, "ar:down")
    await client.connect()
    await sub.subscribe()
    await events.wait("subscribed")
    archive = running.server.persistence.archive
    await proxy.cut()
    for n in range(60):
        await running.node.publish("ar:down", orjson.dumps({"n": n}))
    pubs = await events.wait("publication", 60, timeout=5)  # fan-out does not wait for PostgreSQL
    assert [p.pub.data["n"] for p in pubs] == list(range(60))
    async with asyncio.timeout(scaled(5)):
        while archive.healthy:
            await asyncio.sleep(0.05)
    assert len(archive.buffer) <= 30 and archive.dropped >= 30
    status_code, body = await http_get(running.server.api_port, "/ready")
    assert status_code == 200 and body["postgres"] == "down" and body["archive"]["dropped"] == archive.dropped
    _, metrics = await http_get(running.server.api_port, "/metrics", raw=True)
    assert f"livegate_archive_dropped_total {archive.dropped}" in metrics
    assert "livegate_postgres_up 0" in metrics
    await proxy.start()
    async with asyncio.timeout(scaled(15)):
        while archive.buffer or not archive.healthy:
            await asyncio.sleep(0.05)
    assert archive.written >= 30
    await client.disconnect()


async def http_get(port: int, path: str, raw: bool = False):  # noqa: ANN201
    import aiohttp
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as resp:
        text = await resp.text()
        return resp.status, text if raw else orjson.loads(text)


async def test_retention_by_age_and_size(schema, db, start_server):
    await migrate(DATABASE_URL, schema)
    override = persistence_config(schema)
    override["channel"]["namespaces"] = [
        {**ARCHIVED, "name": "aged", "archive_ttl": "1h"},
        {**ARCHIVED, "name": "sized", "archive_max_size": 10},
        {**ARCHIVED, "name": "ar"},
    ]
    running = await start_server(override)
    rows = [(ch, "e1", off, "{}", "now()") for ch in ("aged:x", "sized:x", "ar:x", "$aged:y") for off in range(1, 2501)]
    await db.executemany(f'INSERT INTO {schema}.publications (channel, epoch, "offset", data) VALUES ($1, $2, $3, $4::jsonb)',
                         [r[:4] for r in rows])
    await db.execute(f"UPDATE {schema}.publications SET created_at = now() - interval '2 hours' "
                     "WHERE channel IN ('aged:x', '$aged:y', 'ar:x') AND \"offset\" <= 1500")
    deleted = await running.server.persistence.retain()
    counts = {r["channel"]: r["n"] for r in await db.fetch(
        f"SELECT channel, count(*) AS n FROM {schema}.publications GROUP BY channel")}
    assert counts == {"aged:x": 1000, "$aged:y": 1000, "sized:x": 10, "ar:x": 2500}
    assert deleted == 1500 * 2 + 2490
    kept = await db.fetch(f'SELECT "offset" FROM {schema}.publications WHERE channel = \'sized:x\' ORDER BY "offset"')
    assert [r["offset"] for r in kept] == list(range(2491, 2501))


async def test_a_hole_in_the_archive_is_not_recovered_over(schema, db, start_server):
    await migrate(DATABASE_URL, schema)
    running = await start_server(persistence_config(schema))
    for n in range(20):
        await running.node.publish("ar:hole", orjson.dumps({"n": n}))
    archive = running.server.persistence.archive
    async with asyncio.timeout(scaled(5)):
        while archive.written < 20:
            await asyncio.sleep(0.02)
    await db.execute(f'DELETE FROM {schema}.publications WHERE "offset" = 5')
    epoch = await db.fetchval(f"SELECT epoch FROM {schema}.publications LIMIT 1")
    from conftest import RawPeer
    peer = await RawPeer.open(running.url)
    try:
        await peer.connect("alice")
        reply = await peer.call("subscribe", {"channel": "ar:hole", "recover": True, "offset": 2, "epoch": epoch})
        sub = reply["subscribe"]
        assert sub.get("recovered") is not True and "publications" not in sub and sub["offset"] == 20
    finally:
        await peer.close()
