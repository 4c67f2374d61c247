"""connect: authenticate (JWT or anonymous), count the connection for its user
(client.user_connection_limit), run the connect hook, set up server-side subscriptions."""

from __future__ import annotations

import random
import time
from typing import Any

from livegate.config import Config
from livegate.errors import DisconnectRequested, TokenExpired, TokenInvalid
from livegate.handlers.refresh import expiry_result
from livegate.protocol import codes
from livegate.protocol.codes import ErrExpired, ErrTokenExpired
from livegate.protocol.commands import ConnectRequest, SubscribeRequest
from livegate.protocol.replies import ConnectResult, SubscribeResult
from livegate.protocol.types import raw_json
from livegate.session import Session, State
from livegate.session.payloads import payload_bytes, payload_value
from livegate.session.subscriptions import Grant, InFlight, remove_subscription, subscribe_channel

__all__ = ["handle_connect", "AfterConnect"]


def _json_or_none(value: Any) -> bytes | None:
    return None if value is None else raw_json(value)


class AfterConnect:
    """Completes the server-side subscriptions once the connect reply is queued."""

    __slots__ = ("flights",)

    def __init__(self, flights: list[InFlight]) -> None:
        self.flights = flights

    async def complete(self) -> None:
        for flight in self.flights:
            pending = flight.complete()
            if pending is not None:
                await pending


def personal_channel(config: Config, user: str) -> str:
    """The user's personal channel (client.subscribe_to_user_personal_channel)."""
    ch = config.channel
    namespace = config.client.subscribe_to_user_personal_channel.personal_channel_namespace
    return f"{namespace}{ch.namespace_boundary}{ch.user_boundary}{user}" if namespace else f"{ch.user_boundary}{user}"


async def handle_connect(session: Session, req: ConnectRequest) -> tuple[ConnectResult, AfterConnect]:
    node = session.node
    cfg = node.config.client
    session.name, session.version = req.name[:64], req.version[:64]
    channels: dict[str, Grant] = {}
    expire_at = 0.0
    if req.token:
        try:
            token = await node.verifier.verify_connect(req.token)
        except TokenExpired:
            raise ErrTokenExpired() from None
        except TokenInvalid:
            raise DisconnectRequested(codes.INVALID_TOKEN.code, codes.INVALID_TOKEN.reason) from None
        if not token.user and cfg.disallow_anonymous_connection_tokens:
            # As Centrifugo: an anonymous connection token is refused with 3507 (terminal).
            raise DisconnectRequested(codes.PERMISSION_DENIED.code, codes.PERMISSION_DENIED.reason)
        if token.expire_at and token.expire_at <= time.time():
            raise ErrExpired()
        session.user, session.conn_info = token.user, token.info
        expire_at = float(token.connection_expires_at or 0)
        for channel in token.channels:
            channels[channel] = Grant()
        for channel, claim in token.subs.items():
            channels[channel] = Grant(
                _json_or_none(claim.get("info")), _json_or_none(claim.get("data")), 0.0,
                claim.get("override") if isinstance(claim.get("override"), dict) else None)
    elif not (cfg.allow_anonymous_connect_without_token or cfg.insecure):
        raise DisconnectRequested(codes.BAD_REQUEST.code, "bad request: connection token required")
    # client.user_connection_limit: counted on every node (the engine's UserConnections).
    user = session.user
    if not await node.add_user_connection(user, session.client_id):
        node.limits.refused("user_connection", node.clock.monotonic(), user=user,
                                  allowed=cfg.user_connection_limit)
        raise DisconnectRequested(codes.CONNECTION_LIMIT.code, codes.CONNECTION_LIMIT.reason)
    try:
        connected = await _complete(session, req, channels, expire_at)
    except BaseException:
        await node.remove_user_connection(user, session.client_id)  # a failed connect counts for nobody
        raise
    node.limits.join_user(session.limiter, user, (other.limiter for other in node.hub.user_connections(user)))
    return connected


async def _complete(session: Session, req: ConnectRequest, channels: dict[str, Grant],
                    expire_at: float) -> tuple[ConnectResult, AfterConnect]:
    """The connect hook, server-side subscriptions and the reply, once the user is known."""
    node = session.node
    cfg = node.config.client
    data: Any = None
    hook = node.app.connect_hook
    if hook is not None:
        outcome = await session.call_app(hook, payload_value(req.data))
        if isinstance(outcome, dict):
            data = outcome.get("data")
            if "info" in outcome:
                session.conn_info = _json_or_none(outcome["info"])
            for channel in outcome.get("channels") or ():
                channels.setdefault(channel, Grant())
    personal = cfg.subscribe_to_user_personal_channel
    if personal.enabled and session.user:
        channels.setdefault(personal_channel(node.config, session.user), Grant())
    # Resolve every server-side channel before the connection counts as connected (102/107).
    resolved = {channel: node.rules.resolve(channel) for channel in channels}
    if session.closing is not None:
        raise DisconnectRequested(session.closing.code, session.closing.reason)
    now = node.clock.monotonic()
    expiry = expiry_result(expire_at)
    result = ConnectResult(client=session.client_id, version=node.version, ping=int(cfg.ping_interval),
                           pong=not session.wire.unidirectional,
                           expires=expiry.expires, ttl=expiry.ttl, data=payload_bytes(data))
    if session.transport.session_token:  # an emulated transport: where its later commands go
        result.session = session.transport.session_token
        result.node = node.uid
    flights: list[InFlight] = []
    if channels:
        subs: dict[str, SubscribeResult] = {}
        try:
            for channel, grant in channels.items():
                wanted = req.subs.get(channel)
                sreq = SubscribeRequest(channel=channel, recover=bool(wanted and wanted.recover),
                                        offset=wanted.offset if wanted else 0, epoch=wanted.epoch if wanted else "")
                subs[channel], flight = await subscribe_channel(
                    session, resolved[channel], sreq, grant, server_side=True)
                flights.append(flight)
        except BaseException:
            # A failed connect leaves nothing behind: no half-made subscriptions.
            for channel in list(session.subs):
                await remove_subscription(session, channel)
            raise
        result.subs = subs
    # Only now does the connection count as connected.
    session.expire_at = expire_at
    session.state = State.CONNECTED
    node.hub.add_connection(session)
    # Spread the first ping over [P/2, P) so that a reconnect wave does not ping in lockstep.
    session.next_ping_at = now + cfg.ping_interval * random.uniform(0.5, 1.0)
    return result, AfterConnect(flights)
