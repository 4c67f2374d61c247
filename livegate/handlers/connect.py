"""connect: authenticate (JWT or anonymous), run the connect hook, set up server-side subscriptions."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from livegate.errors import DisconnectRequested, TokenExpired, TokenInvalid
from livegate.handlers.client import State
from livegate.handlers.refresh import expiry_result
from livegate.handlers.subscribe import Grant, subscribe_channel
from livegate.handlers.unsubscribe import remove_subscription
from livegate.protocol import codes
from livegate.protocol.codes import ErrExpired, ErrTokenExpired
from livegate.protocol.commands import ConnectRequest, SubscribeRequest
from livegate.protocol.types import Fragment, raw_json

if TYPE_CHECKING:
    from livegate.handlers.client import Client, Followup

__all__ = ["handle_connect"]


def _json_or_none(value: Any) -> bytes | None:
    return None if value is None else raw_json(value)


async def handle_connect(client: Client, req: ConnectRequest) -> tuple[dict[str, Any], Followup]:
    node = client.node
    cfg = node.config.client
    client.name, client.version = req.name[:64], req.version[:64]
    channels: dict[str, Grant] = {}
    expire_at = 0.0
    if req.token:
        try:
            token = await node.verifier.verify_connect(req.token)
        except TokenExpired:
            raise ErrTokenExpired() from None
        except TokenInvalid:
            raise DisconnectRequested(codes.INVALID_TOKEN.code, codes.INVALID_TOKEN.reason) from None
        if token.expire_at and token.expire_at <= time.time():
            raise ErrExpired()
        client.user, client.conn_info = token.user, token.info
        expire_at = float(token.connection_expires_at or 0)
        for channel in token.channels:
            channels[channel] = Grant()
        for channel, claim in token.subs.items():
            channels[channel] = Grant(
                _json_or_none(claim.get("info")), _json_or_none(claim.get("data")), 0.0,
                claim.get("override") if isinstance(claim.get("override"), dict) else None)
    elif not (cfg.allow_anonymous_connect_without_token or cfg.insecure):
        raise DisconnectRequested(codes.BAD_REQUEST.code, "bad request: connection token required")
    data: Any = None
    hook = node.app.connect_hook
    if hook is not None:
        outcome = await client.call_app(hook, req.data)
        if isinstance(outcome, dict):
            data = outcome.get("data")
            if "info" in outcome:
                client.conn_info = _json_or_none(outcome["info"])
            for channel in outcome.get("channels") or ():
                channels.setdefault(channel, Grant())
    # Resolve every server-side channel before the connection counts as connected (102/107).
    resolved = {channel: node.rules.resolve(channel) for channel in channels}
    if client.closing is not None:
        raise DisconnectRequested(client.closing.code, client.closing.reason)
    now = time.monotonic()
    result: dict[str, Any] = {"client": client.client_id, "version": node.version,
                              "ping": int(cfg.ping_interval), "pong": True}
    result.update(expiry_result(expire_at))
    if data is not None:
        result["data"] = Fragment(raw_json(data))
    followups: list[Followup] = []
    if channels:
        subs: dict[str, Any] = {}
        try:
            for channel, grant in channels.items():
                wanted = req.subs.get(channel)
                sreq = SubscribeRequest(channel=channel, recover=bool(wanted and wanted.recover),
                                        offset=wanted.offset if wanted else 0, epoch=wanted.epoch if wanted else "")
                sub_result, followup = await subscribe_channel(client, resolved[channel], sreq, grant, server_side=True)
                subs[channel] = sub_result
                followups.append(followup)
        except BaseException:
            # A failed connect leaves nothing behind: no half-made subscriptions.
            for channel in list(client.subs):
                await remove_subscription(client, channel)
            raise
        result["subs"] = subs
    # Only now does the connection count as connected.
    client.expire_at = expire_at
    client.state = State.CONNECTED
    node.hub.add_connection(client)
    # Spread the first ping over [P/2, P) so that a reconnect wave does not ping in lockstep.
    client.next_ping_at = now + cfg.ping_interval * random.uniform(0.5, 1.0)

    async def after() -> None:
        for followup in followups:
            pending = followup()
            if pending is not None:
                await pending

    return result, after
