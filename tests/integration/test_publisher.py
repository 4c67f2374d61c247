"""livegate.publisher against a real `livegate serve` (redis engine over two Redis servers,
PostgreSQL persistence): every door, async and sync, delivers to a subscribed client, returns
the position, honours idempotency keys and raises the same typed errors. Also the examples in
examples/ (FastAPI, the Django outbox)."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import py_compile
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
from conftest import BASE_CONFIG, DATABASE_URL, REDIS_URL, REDIS_URL_2, RawPeer, merge, scaled, unique_prefix
from procs import free_port, to_toml

from livegate.persistence.migrate import migrate
from livegate.publisher import (
    ClientError,
    ErrBadRequest,
    ErrNotAvailable,
    ErrUnauthorized,
    ErrUnknownChannel,
    OutcomeUnknown,
    Publisher,
    PublisherUnavailable,
    PublishResult,
    SyncPublisher,
    shard_index,
)
from livegate.publisher import aio as publisher_aio
from livegate.publisher import sync as publisher_sync
from livegate.publisher.common import EntryWatch

ROOT = Path(__file__).resolve().parents[2]
API_KEY = BASE_CONFIG["http_api"]["key"]
MAX_SIZE = 1024  # channel.max_publication_size of the server under test
NAMESPACES = [
    *BASE_CONFIG["channel"]["namespaces"],
    {"name": "nohist", "allow_subscribe_for_client": True},
    {"name": "orders", "history_size": 10, "history_ttl": "1m", "allow_subscribe_for_client": True},
]


@dataclass
class Gate:
    prefix: str
    schema: str
    ws_url: str
    api_url: str

    def publisher(self, door: str, mode: str, **kwargs: Any) -> Any:
        """A publisher of ``door`` (redis, stream, http), async or sync, on this server."""
        factory = Publisher if mode == "async" else SyncPublisher
        if door == "redis":
            return factory.redis([REDIS_URL, REDIS_URL_2], prefix=kwargs.get("prefix", self.prefix))
        if door == "stream":
            return factory.stream(REDIS_URL, prefix=kwargs.get("prefix", self.prefix))
        return factory.http(self.api_url, api_key=kwargs.get("api_key", API_KEY))


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    """One `livegate serve` for the module: redis engine on two Redis servers, persistence
    with the outbox in a schema of its own."""
    assert REDIS_URL_2, "REDIS_URL_2 is not set: scripts/services.sh starts a second Redis"
    prefix, schema = unique_prefix(), "lgt_" + uuid.uuid4().hex[:10]
    asyncio.run(migrate(DATABASE_URL, schema))
    port, api_port = free_port(), free_port()
    config = merge(BASE_CONFIG, {
        "http_server": {"port": port}, "http_api": {"port": api_port},
        "engine": {"type": "redis", "redis": {"address": [REDIS_URL, REDIS_URL_2], "prefix": prefix}},
        "persistence": {"dsn": DATABASE_URL, "schema": schema, "outbox_poll_interval": "0.5s"},
        "channel": {"max_publication_size": MAX_SIZE, "namespaces": NAMESPACES},
    })
    folder = tmp_path_factory.mktemp("publisher")
    (folder / "config.toml").write_text(to_toml(config))
    log = open(folder / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "livegate.cli", "serve", "--config", str(folder / "config.toml")],
                            stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + scaled(15)
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (folder / "serve.log").read_text()
            time.sleep(0.05)
        yield Gate(prefix, schema, f"ws://127.0.0.1:{port}/connection/websocket", f"http://127.0.0.1:{api_port}/api")
    finally:
        proc.terminate()
        try:
            proc.wait(scaled(10))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for url in (REDIS_URL, REDIS_URL_2):
            client = redis.Redis.from_url(url)
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
            client.close()
        asyncio.run(_drop_schema(schema))


async def _drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(DATABASE_URL)
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    await conn.close()


class Subscriber:
    def __init__(self, peer: RawPeer) -> None:
        self.peer = peer

    async def pub(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next publication pushed to this client: {"channel", "data", "offset", ...}."""
        while True:
            msg = self.peer.pushes.pop(0) if self.peer.pushes else await self.peer.recv(timeout)
            push = msg.get("push", {})
            if "pub" in push:
                return {"channel": push["channel"], **push["pub"]}


@asynccontextmanager
async def subscribed(gate: Gate, *channels: str) -> AsyncIterator[Subscriber]:
    peer = await RawPeer.open(gate.ws_url)
    try:
        assert "connect" in await peer.connect("alice")
        for channel in channels:
            reply = await peer.call("subscribe", {"channel": channel})
            assert "subscribe" in reply, reply
        yield Subscriber(peer)
    finally:
        await peer.close()


async def call(target: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """``target.method(...)``, awaited when it is a coroutine (async and sync publishers alike)."""
    value = getattr(target, method)(*args, **kwargs)
    return await value if inspect.isawaitable(value) else value


async def closing(pub: Any) -> None:
    await call(pub, "close")


def uniq(namespace: str) -> str:
    return f"{namespace}:{uuid.uuid4().hex[:12]}"


DOORS = [(door, mode) for door in ("redis", "stream", "http") for mode in ("async", "sync")]
door_params = pytest.mark.parametrize(("door", "mode"), DOORS, ids=[f"{d}-{m}" for d, m in DOORS])


@door_params
async def test_publish_delivers_with_position_idempotency_tags_and_binary(gate, door, mode):
    channel, nohist, binary = uniq("feed"), uniq("nohist"), uniq("bin")
    pub = gate.publisher(door, mode)
    try:
        async with subscribed(gate, channel, nohist, binary) as sub:
            first = await call(pub, "publish", channel, {"n": 1, "big": 2**70}, tags={"kind": "first"})
            await call(pub, "wait", first)
            got = await sub.pub()
            assert got["channel"] == channel and got["data"] == {"n": 1, "big": 2**70}
            assert got["tags"] == {"kind": "first"}
            if door == "stream":  # known once an instance ran it
                assert (first.offset, first.epoch) == (0, "") and re.fullmatch(r"\d+-\d+", first.entry_id)
            else:
                assert first.offset == got["offset"] == 1 and first.epoch and not first.entry_id

            key = f"k-{uuid.uuid4().hex}"
            once = await call(pub, "publish", channel, b'{"n": "once"}', idempotency_key=key)
            again = await call(pub, "publish", channel, {"n": "again"}, idempotency_key=key)
            await call(pub, "wait", once)
            await call(pub, "wait", again)
            if door != "stream":
                assert again == once == PublishResult(2, first.epoch)
            marker = await call(pub, "publish", channel, {"n": "marker"})
            await call(pub, "wait", marker)
            assert [(await sub.pub())["data"]["n"] for _ in range(2)] == ["once", "marker"]  # "again" was not published

            no_history = await call(pub, "publish", nohist, "text")  # a str is a JSON string
            await call(pub, "wait", no_history)
            assert (no_history.offset, no_history.epoch) == (0, "")
            assert (await sub.pub())["data"] == "text"

            raw = await call(pub, "publish", binary, b'{"b": 1}', binary=True)  # JSON bytes: readable here
            await call(pub, "wait", raw)
            assert (await sub.pub())["data"] == {"b": 1}
    finally:
        await closing(pub)


def channel_on_shard(namespace: str, shard: int) -> str:
    """A channel the publisher routes to ``shard`` of two (had it routed it wrongly, the
    server, which listens on the right one, would not deliver it)."""
    for _ in range(1000):
        if shard_index(channel := uniq(namespace), 2) == shard:
            return channel
    raise AssertionError(f"no channel on shard {shard}")


@door_params
async def test_broadcast_reaches_channels_on_both_redis_servers(gate, door, mode):
    channels = [channel_on_shard("feed", 0), channel_on_shard("feed", 1)]
    pub = gate.publisher(door, mode)
    try:
        async with subscribed(gate, *channels) as sub:
            if door == "stream":
                results = await call(pub, "broadcast", channels, {"all": True})
                assert len(results) == 2 and results[0].entry_id
                await call(pub, "wait", results[0])
            else:
                results = await call(pub, "broadcast", [*channels, "nope:x"], {"all": True})
                assert [(r.offset, bool(r.epoch)) for r in results[:2]] == [(1, True), (1, True)]
                assert isinstance(results[2], ErrUnknownChannel)  # one channel's error, the others published
            assert sorted([(await sub.pub())["channel"] for _ in range(2)]) == sorted(channels)
            for channel in channels:  # each on its own server: the single publishes route alike
                await call(pub, "wait", await call(pub, "publish", channel, {"one": channel}))
            assert sorted([(await sub.pub())["data"]["one"] for _ in range(2)]) == sorted(channels)
    finally:
        await closing(pub)


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_a_refused_batch_still_answers_per_channel(gate, mode):
    # Two refused channels on server 0 (each fails the all-or-nothing batch of that server),
    # good ones on both servers: every channel gets its own answer, the good ones publish once.
    good = [channel_on_shard("feed", 0), channel_on_shard("feed", 1), channel_on_shard("feed", 0)]
    refused = [channel_on_shard("nope", 0), channel_on_shard("nope", 0)]
    channels = [refused[0], good[0], good[1], refused[1], good[2]]
    key = f"k-{uuid.uuid4().hex}"
    pub = gate.publisher("redis", mode)
    try:
        async with subscribed(gate, *good) as sub:
            results = await call(pub, "broadcast", channels, {"b": 1}, idempotency_key=key)
            assert [type(r) for r in results] == [ErrUnknownChannel, PublishResult, PublishResult,
                                                  ErrUnknownChannel, PublishResult]
            assert [r.offset for r in results if isinstance(r, PublishResult)] == [1, 1, 1]
            assert 'namespace "nope"' in results[3].message
            again = await call(pub, "broadcast", channels, {"b": 2}, idempotency_key=key)  # a retry
            assert [r for r in again if isinstance(r, PublishResult)] == [r for r in results if isinstance(r, PublishResult)]
            marker = await call(pub, "broadcast", good, {"b": "marker"})
            assert [r.offset for r in marker] == [2, 2, 2]
            seen: dict[str, list[Any]] = {channel: [] for channel in good}
            for _ in range(6):
                got = await sub.pub()
                seen[got["channel"]].append(got["data"]["b"])
            assert seen == {channel: [1, "marker"] for channel in good}  # the retry published nothing
    finally:
        await closing(pub)


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_a_broadcast_tries_every_server_before_reporting_one_out_of_reach(gate, mode):
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: server 1 is out of reach
    up, away = channel_on_shard("feed", 0), channel_on_shard("feed", 1)
    factory = Publisher if mode == "async" else SyncPublisher
    pub = factory.redis([REDIS_URL, down], prefix=gate.prefix, timeout=1)
    try:
        async with subscribed(gate, up) as sub:
            with pytest.raises(PublisherUnavailable, match=down.rsplit(":", 1)[1].split("/")[0]):
                await call(pub, "broadcast", [away, up], {"v": 1})  # the server out of reach comes first
            got = await sub.pub()  # server 0 was published all the same
            assert (got["channel"], got["data"]) == (up, {"v": 1})
    finally:
        await closing(pub)


async def fails(pub: Any, door: str, *args: Any, **kwargs: Any) -> BaseException:
    """The error a publish fails with: raised by the call, or, through the stream door, the
    one its entry was dead-lettered with."""
    try:
        result = await call(pub, "publish", *args, **kwargs)
        await call(pub, "wait", result, timeout=scaled(5))
    except (ClientError, PublisherUnavailable, TimeoutError) as exc:
        return exc
    raise AssertionError(f"{door}: publish {args} succeeded")


@door_params
async def test_errors_are_typed_alike_at_every_door(gate, door, mode):
    pub = gate.publisher(door, mode)
    try:
        err = await fails(pub, door, "nope:x", {"a": 1})
        assert type(err) is ErrUnknownChannel and err.code == 102, err
        err = await fails(pub, door, uniq("feed"), {"s": "x" * MAX_SIZE})
        assert type(err) is ErrBadRequest and "max_publication_size" in err.message, err
        err = await fails(pub, door, uniq("feed"), b'{"a": 1,}')  # refused before it leaves
        assert type(err) is ErrBadRequest and "JSON" in err.message, err
        err = await fails(pub, door, uniq("feed"), b"\x00\xff", binary=True)  # refused by the server
        assert type(err) is ErrBadRequest and err.code == 107, err
        err = await fails(pub, door, uniq("obj"), [1])  # json_object namespace
        assert type(err) is ErrBadRequest, err
        err = await fails(pub, door, uniq("feed"), {"a": 1}, tags={"n": 1})
        assert type(err) is ErrBadRequest and "tags" in err.message, err
        with pytest.raises(ErrBadRequest, match="channels is required"):
            await call(pub, "broadcast", [], {"a": 1})
    finally:
        await closing(pub)
    if door == "http":
        wrong = gate.publisher(door, mode, api_key="wrong")
        try:
            err = await fails(wrong, door, uniq("feed"), {"a": 1})
            assert type(err) is ErrUnauthorized and err.code == 101, err
        finally:
            await closing(wrong)
        return
    other = unique_prefix()  # no livegate under this prefix
    wrong = gate.publisher(door, mode, prefix=other)
    try:
        if door == "redis":
            err = await fails(wrong, door, uniq("feed"), {"a": 1})
            assert type(err) is ErrNotAvailable and f'prefix "{other}"' in err.message, err
        else:  # nobody reads that stream: wait says so in time
            result = await call(wrong, "publish", uniq("feed"), {"a": 1})
            with pytest.raises(TimeoutError, match="not executed"):
                await call(wrong, "wait", result, timeout=0.2)
    finally:
        await closing(wrong)
        with redis.Redis.from_url(REDIS_URL) as client:
            client.delete(f"{other}.api.stream")


@door_params
async def test_an_unreachable_door_is_publisher_unavailable(door, mode):
    port = free_port()  # nothing listens there
    factory = Publisher if mode == "async" else SyncPublisher
    pub = {"redis": lambda: factory.redis(f"redis://127.0.0.1:{port}/0", timeout=1),
           "stream": lambda: factory.stream(f"redis://127.0.0.1:{port}/0", timeout=1),
           "http": lambda: factory.http(f"http://127.0.0.1:{port}/api", timeout=1)}[door]()
    try:
        for method, target in (("publish", "feed:x"), ("broadcast", ["feed:x"])):
            with pytest.raises(PublisherUnavailable, match=str(port)) as info:
                await call(pub, method, target, {"a": 1})
            assert info.value.temporary
    finally:
        await closing(pub)


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_wait_claims_success_only_for_an_entry_known_to_have_run(mode):
    """The stream's consumer played by hand on a prefix of its own, leaving entries as
    livegate/api/stream.py does: acknowledged (ran), dead-lettered, trimmed once done with
    (XTRIM MINID), or cut to the length bound (XTRIM MAXLEN api_stream_max_length, here 5)
    before or while it ran."""
    prefix = unique_prefix()
    stream, dead = f"{prefix}.api.stream", f"{prefix}.api.dead"
    factory = Publisher if mode == "async" else SyncPublisher
    pub = factory.stream([REDIS_URL], prefix=prefix, max_length=5)
    consumer = redis.Redis.from_url(REDIS_URL)
    try:
        consumer.xgroup_create(stream, "livegate", id="0", mkstream=True)

        async def publish() -> PublishResult:
            return await call(pub, "publish", uniq("feed"), {"a": 1})

        def read(entry: PublishResult | None = None) -> None:
            """XREADGROUP as an instance does: everything new becomes pending."""
            got = consumer.xreadgroup("livegate", "c1", {stream: ">"}, count=100)
            assert entry is None or entry.entry_id in [eid.decode() for _, entries in got for eid, _ in entries]

        def done(entry: PublishResult) -> None:
            """Read (if not yet), ran and acknowledged, then trimmed with what came before."""
            consumer.xreadgroup("livegate", "c1", {stream: ">"}, count=100)
            consumer.xack(stream, "livegate", entry.entry_id)
            ms, seq = entry.entry_id.split("-")
            consumer.xtrim(stream, minid=f"{ms}-{int(seq) + 1}", approximate=False)

        def more(count: int) -> None:
            for _ in range(count):
                consumer.xadd(stream, {"method": "publish", "payload": b"{}"})

        def cut() -> None:
            consumer.xtrim(stream, maxlen=5, approximate=False)

        async def look(watch: EntryWatch) -> bool:
            """One poll of wait's, on this door's own client."""
            if mode == "async":
                return await publisher_aio._drive(pub._client, watch.poll())
            return publisher_sync._drive(pub._client, watch.poll())

        ran = await publish()
        read(ran)
        consumer.xack(stream, "livegate", ran.entry_id)
        await call(pub, "wait", ran, timeout=scaled(5))  # acknowledged and still there: it ran

        failed = await publish()
        read(failed)
        consumer.xadd(dead, {"id": failed.entry_id, "error": "102: unknown channel"})
        consumer.xack(stream, "livegate", failed.entry_id)
        with pytest.raises(ErrUnknownChannel):
            await call(pub, "wait", failed, timeout=scaled(5))

        trimmed = await publish()  # ran, then trimmed with 4 after it: too few for a cut to 5
        assert trimmed.stream_added is not None
        more(4)
        done(trimmed)
        await call(pub, "wait", trimmed, timeout=scaled(5))

        consumer.xtrim(stream, maxlen=0, approximate=False)  # all read: nothing older left to blur the count
        seen = await publish()  # the same, known from wait having seen it (no count from the XADD)
        watch = EntryWatch(stream, dead, seen.entry_id, max_length=5)
        assert not await look(watch) and watch.added_at is not None
        more(4)
        done(seen)
        assert await look(watch)
        late = EntryWatch(stream, dead, seen.entry_id, max_length=5)  # never saw it: cannot tell
        with pytest.raises(OutcomeUnknown):
            await look(late)

        unread = await publish()  # cut before any instance read it
        assert unread.stream_added is not None
        more(5)
        cut()
        read()  # the group reads past where it was
        with pytest.raises(OutcomeUnknown, match="no longer in the stream"):
            await call(pub, "wait", unread, timeout=scaled(5))

        pending = await publish()  # cut while pending; the claim then finds nothing and acknowledges
        assert pending.stream_added is not None
        read(pending)
        more(5)
        cut()
        consumer.xack(stream, "livegate", pending.entry_id)
        read()
        with pytest.raises(OutcomeUnknown):
            await call(pub, "wait", pending, timeout=scaled(5))
    finally:
        await closing(pub)
        consumer.delete(stream, dead)
        consumer.close()


async def test_idempotency_keys_are_shared_by_the_doors(gate):
    channel, key = uniq("feed"), f"k-{uuid.uuid4().hex}"
    async with gate.publisher("redis", "async") as fcall, gate.publisher("http", "async") as http:
        first = await fcall.publish(channel, {"n": 1}, idempotency_key=key)
        assert await http.publish(channel, {"n": 2}, idempotency_key=key) == first
        with gate.publisher("redis", "sync") as sync:
            assert sync.publish(channel, {"n": 3}, idempotency_key=key) == first
        assert (await http.publish(channel, {"n": 4})).offset == first.offset + 1


def load_example(name: str) -> Any:
    path = ROOT / "examples" / f"{name}.py"
    py_compile.compile(str(path), doraise=True)
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("door", ["redis", "stream", "http"])
async def test_fastapi_example_publishes_an_order_update(gate, door, monkeypatch):
    example = load_example("fastapi_app")
    monkeypatch.setenv("LIVEGATE_DOOR", door)
    monkeypatch.setenv("LIVEGATE_PREFIX", gate.prefix)
    monkeypatch.setenv("LIVEGATE_REDIS", f"{REDIS_URL},{REDIS_URL_2}" if door == "redis" else REDIS_URL)
    monkeypatch.setenv("LIVEGATE_API_URL", gate.api_url)
    monkeypatch.setenv("LIVEGATE_API_KEY", API_KEY)
    order = int(uuid.uuid4().int % 10**9)
    async with subscribed(gate, f"orders:{order}") as sub, example.make_publisher() as pub:
        answer = await example.publish_order_update(pub, order, "paid")
        assert answer["channel"] == f"orders:{order}"
        assert answer["offset"] == (0 if door == "stream" else 1)
        assert (await sub.pub())["data"] == {"order": order, "state": "paid"}
        await example.publish_order_update(pub, order, "paid")  # a retry: published once
        await example.publish_order_update(pub, order, "shipped")
        assert (await sub.pub())["data"]["state"] == "shipped"


async def test_fastapi_example_answers_each_outcome_with_its_status(gate):
    example = load_example("fastapi_app")
    order = int(uuid.uuid4().int % 10**9)
    async with subscribed(gate, f"orders:{order}") as sub, gate.publisher("redis", "async") as pub:
        status, body = await example.order_state_answer(pub, order, "paid")
        assert status == 200 and body["channel"] == f"orders:{order}" and body["offset"] == 1 and body["epoch"]
        assert (await sub.pub())["data"] == {"order": order, "state": "paid"}
        status, body = await example.order_state_answer(pub, order, "x" * MAX_SIZE)
        assert status == 400 and "max_publication_size" in body["detail"]
    async with gate.publisher("redis", "async", prefix=unique_prefix()) as wrong:  # no livegate there
        status, body = await example.order_state_answer(wrong, order, "paid")
        assert status == 502 and body["code"] == 108 and "no livegate config" in body["detail"]
    async with Publisher.redis(f"redis://127.0.0.1:{free_port()}/0", timeout=1) as down:
        assert (await example.order_state_answer(down, order, "paid"))[0] == 503
    other = unique_prefix()
    async with Publisher.stream(REDIS_URL, prefix=other) as unread:  # nobody reads that stream
        status, body = await example.order_state_answer(unread, order, "paid", wait_timeout=0.2)
        assert status == 504 and "not executed" in body["detail"]
    with redis.Redis.from_url(REDIS_URL) as client:
        client.delete(f"{other}.api.stream")


class RecordingCursor:
    """A DB-API cursor that keeps what it was asked to execute."""

    def __init__(self) -> None:
        self.executed: list[tuple[str, tuple[Any, ...]]] = []

    def execute(self, sql: str, params: Any = ()) -> None:
        self.executed.append((sql, tuple(params)))


async def run_in(conn: asyncpg.Connection, cursor: RecordingCursor) -> None:
    """The cursor's statements on asyncpg: the same SQL, ``%s`` numbered as ``$n``."""
    for sql, params in cursor.executed:
        pieces = sql.split("%s")
        assert len(pieces) == len(params) + 1
        await conn.execute("".join(f"{piece}${i}" for i, piece in enumerate(pieces[:-1], 1)) + pieces[-1], *params)


async def test_django_outbox_example_publishes_after_commit_only(gate):
    example = load_example("django_outbox")
    channel = uniq("orders")
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        async with subscribed(gate, channel) as sub:
            rolled_back = RecordingCursor()
            example.enqueue_publish(rolled_back, channel, {"state": "never"}, schema=gate.schema)
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await run_in(conn, rolled_back)
                    raise RuntimeError("the app's transaction fails")
            committed = RecordingCursor()
            example.enqueue_publish(committed, channel, {"state": "paid"}, idempotency_key=f"{channel}-paid",
                                    schema=gate.schema)
            example.enqueue_publish(committed, channel, {"state": "paid"}, idempotency_key=f"{channel}-paid",
                                    schema=gate.schema)  # a retried request: published once
            example.enqueue_publish(committed, channel, {"state": "shipped"}, schema=gate.schema)
            assert committed.executed[0][0] == f"INSERT INTO {gate.schema}.outbox (method, payload, partition) " \
                                               "VALUES (%s, %s::jsonb, %s)"
            async with conn.transaction():
                await run_in(conn, committed)
            first, second = await sub.pub(), await sub.pub()
            assert [first["data"], second["data"]] == [{"state": "paid"}, {"state": "shipped"}]  # never "never"
            assert (first["offset"], second["offset"]) == (1, 2)
        assert await conn.fetchval(f"SELECT count(*) FROM {gate.schema}.outbox_dead") == 0
    finally:
        await conn.close()
    with pytest.raises(ValueError, match="identifier"):
        example.enqueue_publish(RecordingCursor(), channel, {}, schema="x; DROP TABLE y")

