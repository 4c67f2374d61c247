"""The server API driven by the real `cent` client (sync and async), on both engines."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import redis.asyncio as aioredis
from cent import (
    AsyncClient,
    BatchRequest,
    BroadcastRequest,
    ChannelsRequest,
    Client,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent.dto import Disconnect, StreamPosition
from cent.exceptions import CentApiResponseError, CentUnauthorizedError
from conftest import REDIS_URL, token, unique_prefix
from sdk import sdk_subscription


class SyncAdapter:
    """cent's sync Client, called from a thread so the in-process server keeps serving."""

    def __init__(self, url: str, key: str) -> None:
        self.client = Client(url, key)

    def __getattr__(self, name):  # noqa: ANN001, ANN204
        method = getattr(self.client, name)

        async def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            return await asyncio.to_thread(method, *args, **kwargs)

        return call

    async def close(self) -> None:
        self.client.close()


@pytest.fixture(params=["memory", "redis"])
async def running(request, start_server):
    override = {}
    if request.param == "redis":
        override = {"engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": unique_prefix()}}}
    r = await start_server(override)
    yield r
    if request.param == "redis":
        client = aioredis.Redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=f"{r.config.engine.redis.prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def api_url(r) -> str:
    return f"http://127.0.0.1:{r.server.api_port}/api"


@pytest.fixture(params=["async", "sync"])
async def api(request, running):
    client = AsyncClient(api_url(running), "test-api-key") if request.param == "async" else SyncAdapter(api_url(running), "test-api-key")
    yield client
    await client.close()


async def test_publish_and_history(api, running, clients):
    sdk, _ = clients(running.url, token("alice"))
    sub, events = sdk_subscription(sdk, "chat:api")
    await sdk.connect()
    await sub.subscribe()
    await events.wait("subscribed")
    first = await api.publish(PublishRequest(channel="chat:api", data={"n": 1}, tags={"k": "v"}))
    second = await api.publish(PublishRequest(channel="chat:api", data={"n": 2}))
    assert (first.offset, second.offset) == (1, 2) and first.epoch == second.epoch
    pubs = await events.wait("publication", 2)
    assert [p.pub.data for p in pubs] == [{"n": 1}, {"n": 2}] and pubs[0].pub.tags == {"k": "v"}
    history = await api.history(HistoryRequest(channel="chat:api", limit=10))
    assert [p.data for p in history.publications] == [{"n": 1}, {"n": 2}] and history.offset == 2
    newest = await api.history(HistoryRequest(channel="chat:api", limit=1, reverse=True))
    assert [p.offset for p in newest.publications] == [2]
    since = await api.history(HistoryRequest(channel="chat:api", limit=10, since=StreamPosition(offset=1, epoch=first.epoch)))
    assert [p.offset for p in since.publications] == [2]
    with pytest.raises(CentApiResponseError) as err:
        await api.history(HistoryRequest(channel="chat:api", limit=10, since=StreamPosition(offset=1, epoch="other")))
    assert err.value.code == 112
    await api.history_remove(HistoryRemoveRequest(channel="chat:api"))
    after = await api.history(HistoryRequest(channel="chat:api", limit=10))
    assert after.publications == [] and after.offset == 2


async def test_publish_errors(api):
    no_history = await api.publish(PublishRequest(channel="plain", data={"x": 1}))
    assert no_history.offset in (None, 0)
    for channel, code in [("nope:x", 102), ("", 107), ("chat:" + "x" * 300, 107)]:
        with pytest.raises(CentApiResponseError) as err:
            await api.publish(PublishRequest(channel=channel, data={"x": 1}))
        assert err.value.code == code
    with pytest.raises(CentApiResponseError) as err:
        await api.history(HistoryRequest(channel="plain", limit=1))
    assert err.value.code == 108
    with pytest.raises(CentApiResponseError) as err:
        await api.presence(PresenceRequest(channel="plain"))
    assert err.value.code == 108


async def test_broadcast_answers_per_channel(api):
    result = await api.broadcast(BroadcastRequest(channels=["chat:b1", "nope:b2", "chat:b3"], data={"x": 1}))
    first, second, third = result.responses
    assert first.result.offset == 1 and third.result.offset == 1
    assert second.error.code == 102


async def test_subscribe_unsubscribe_disconnect_refresh_users(api, running, clients):
    sdk, cev = clients(running.url, token("bob"))
    await sdk.connect()
    await api.subscribe(SubscribeRequest(user="bob", channel="chat:srv", data={"why": "api"}))
    (ctx,) = await cev.wait("subscribed")
    assert ctx.channel == "chat:srv" and ctx.recoverable
    await api.publish(PublishRequest(channel="chat:srv", data={"n": 1}))
    (pub,) = await cev.wait("publication")
    assert pub.channel == "chat:srv" and pub.pub.data == {"n": 1}
    presence = await api.presence(PresenceRequest(channel="chat:srv"))
    assert [c.user for c in presence.presence.values()] == ["bob"]
    stats = await api.presence_stats(PresenceStatsRequest(channel="chat:srv"))
    assert (stats.num_clients, stats.num_users) == (1, 1)
    channels = await api.channels(ChannelsRequest(pattern="chat:*"))
    assert channels.channels["chat:srv"].num_clients == 1
    assert (await api.channels(ChannelsRequest(pattern="other:*"))).channels == {}
    await api.unsubscribe(UnsubscribeRequest(user="bob", channel="chat:srv"))
    (gone,) = await cev.wait("unsubscribed")
    assert gone.channel == "chat:srv"
    await api.refresh(RefreshRequest(user="bob", expired=True))
    reconnecting = await cev.wait("connecting", 2)
    assert reconnecting[1].code == 3005
    await cev.wait("connected", 2)
    await api.disconnect(DisconnectRequest(user="bob", disconnect=Disconnect(code=4501, reason="go away")))
    (ctx,) = await cev.wait("disconnected")
    assert (ctx.code, ctx.reason) == (4501, "go away")


async def test_disconnect_reason_is_cut_to_123_bytes(api, running, clients):
    sdk, events = clients(running.url, token("erin"))
    await sdk.connect()
    await api.disconnect(DisconnectRequest(user="erin", disconnect=Disconnect(code=4501, reason="я" * 100)))
    (ctx,) = await events.wait("disconnected")
    assert ctx.code == 4501 and ctx.reason == "я" * 61  # 122 bytes of UTF-8; a character is never cut


async def test_disconnect_whitelist_and_default_code(api, running, clients):
    keep, kev = clients(running.url, token("carol"))
    drop, dev = clients(running.url, token("carol"))
    await keep.connect()
    await drop.connect()
    keep_id = (await kev.wait("connected"))[0].client
    await api.disconnect(DisconnectRequest(user="carol", whitelist=[keep_id]))
    (ctx,) = await dev.wait("disconnected")
    assert ctx.code == 3503
    # A round trip on the kept connection: had the disconnect closed it too, it would have
    # been closed before this reply.
    await keep.publish("plain", {"still": "here"})
    assert kev.of("disconnected") == [] and len(kev.of("connected")) == 1


async def test_info_and_batch(api, running):
    info = await api.info(InfoRequest())
    assert len(info.nodes) == 1 and info.nodes[0].uid == running.node.uid
    replies = await api.batch(BatchRequest(requests=[
        PublishRequest(channel="chat:batch", data={"n": 1}),
        PublishRequest(channel="chat:batch", data={"n": 2}),
        HistoryRequest(channel="chat:batch", limit=10),
    ], parallel=False))
    assert [r.offset for r in replies.replies[:2]] == [1, 2]
    assert [p.data for p in replies.replies[2].publications] == [{"n": 1}, {"n": 2}]
    parallel = await api.batch(BatchRequest(requests=[
        PublishRequest(channel="chat:p1", data={"n": 1}), PublishRequest(channel="chat:p2", data={"n": 1})], parallel=True))
    assert [r.offset for r in parallel.replies] == [1, 1]


async def test_wrong_key_is_unauthorized(running):
    client = AsyncClient(api_url(running), "wrong-key")
    with pytest.raises(CentUnauthorizedError):
        await client.info(InfoRequest())
    await client.close()


async def http(running, method: str, path: str, *, body: bytes | None = None, headers=None):  # noqa: ANN001, ANN201
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"http://127.0.0.1:{running.server.api_port}{path}",
                                   data=body, headers=headers or {}) as resp:
            return resp.status, await resp.read()


KEY = {"X-API-Key": "test-api-key"}


async def test_http_error_paths(running):
    assert (await http(running, "POST", "/api/info", headers={"Authorization": "apikey test-api-key"}))[0] == 200
    assert (await http(running, "POST", "/api/info", headers={"Authorization": "Bearer test-api-key"})) == (401, b"")
    assert (await http(running, "POST", "/api/info?api_key=test-api-key"))[0] == 200
    assert (await http(running, "POST", "/api/frobnicate", headers=KEY))[0] == 404
    assert (await http(running, "GET", "/api/publish", headers=KEY))[0] == 405
    status, body = await http(running, "POST", "/api/publish", body=b"{not json", headers=KEY)
    assert status == 400 and b"JSON" in body
    assert (await http(running, "POST", "/api/publish", body=b"[1,2]", headers=KEY))[0] == 400
    status, body = await http(running, "POST", "/api/publish", body=b'{"channel": 5, "data": {}}', headers=KEY)
    assert status == 200 and b'"code":107' in body and b"channel" in body
    status, body = await http(running, "POST", "/api/publish", body=b'{"data": {}}', headers=KEY)
    assert b'"code":107' in body and b"channel" in body
    status, _ = await http(running, "POST", "/api/publish", body=b'{"channel":"chat:x","data":"' + b"x" * 2_000_000 + b'"}', headers=KEY)
    assert status == 413
    status, body = await http(running, "POST", "/api/batch", body=b'{"commands":[{"frobnicate":{}},{"info":{}}]}', headers=KEY)
    assert status == 200
    import orjson
    replies = orjson.loads(body)["replies"]
    assert replies[0]["error"]["code"] == 104 and "nodes" in replies[1]["info"]
    status, body = await http(running, "POST", "/api", body=b'{"method":"info","params":{}}', headers=KEY)
    assert status == 200 and b"nodes" in body


async def test_no_key_configured_means_no_access(start_server):
    r = await start_server({"http_api": {"key": ""}})
    assert (await http(r, "POST", "/api/info", headers={"X-API-Key": ""}))[0] == 401
    r2 = await start_server({"http_api": {"key": "", "insecure": True}})
    assert (await http(r2, "POST", "/api/info"))[0] == 200


async def test_openapi_document_validates_and_lists_every_method(running):
    from openapi_spec_validator import validate

    from livegate.api.models import MODELS

    status, body = await http(running, "GET", "/api/openapi.json")
    assert status == 200
    import json
    doc = json.loads(body)
    validate(doc)
    assert sorted(p.rsplit("/", 1)[1] for p in doc["paths"]) == sorted(MODELS)
    publish = doc["components"]["schemas"]["PublishRequest"]
    assert "channel" in publish["required"]


async def test_health_and_ready_on_both_ports(running):
    assert (await http(running, "GET", "/health"))[0] == 200
    assert (await http(running, "GET", "/ready"))[0] == 200
    running.node.draining = True
    assert (await http(running, "GET", "/ready"))[0] == 503
    running.node.draining = False


async def test_metrics_count_known_traffic(start_server, clients):
    """Counts are per node: a second server in the same process, with its own traffic, changes
    nothing here (no process-global metrics)."""
    running = await start_server()
    other = await start_server()
    other_sdk, other_events = clients(other.url, token("erin"))
    await other_sdk.connect()
    other_api = AsyncClient(api_url(other), "test-api-key")
    await other_api.publish(PublishRequest(channel="chat:m", data={"n": -1}))
    await other_api.close()
    sdk, events = clients(running.url, token("dave"))
    sub, sev = sdk_subscription(sdk, "chat:m")
    await sdk.connect()
    await sub.subscribe()
    await sev.wait("subscribed")
    api = AsyncClient(api_url(running), "test-api-key")
    for n in range(5):
        await api.publish(PublishRequest(channel="chat:m", data={"n": n}))
    await sev.wait("publication", 5)
    await api.disconnect(DisconnectRequest(user="dave"))
    await events.wait("disconnected")
    await api.close()
    status, body = await http(running, "GET", "/metrics")
    text = body.decode()
    assert status == 200

    def value(line_start: str) -> float:
        return float(next(line for line in text.splitlines() if line.startswith(line_start)).rsplit(" ", 1)[1])

    assert value("livegate_publications_total ") == 5
    assert value("livegate_pushes_total ") == 5 + 1  # five pubs and the join
    assert value('livegate_disconnects_total{code="3503"}') == 1
    assert value('livegate_api_requests_total{method="publish",result="ok"}') == 5
    assert value('livegate_commands_total{method="subscribe",result="ok"}') == 1
    assert value('livegate_commands_total{method="connect",result="ok"}') == 1
    assert value("livegate_connections ") == 0
    assert 'livegate_command_duration_seconds_bucket{le="+Inf",method="connect"} 1.0' in text
    assert value("livegate_engine_up ") == 1
    for name in ("livegate_connections", "livegate_subscriptions", "livegate_channels", "livegate_bytes_out_total",
                 "livegate_broker_publish_duration_seconds_count", "livegate_postgres_up"):
        assert any(line.startswith(name) for line in text.splitlines()), name
