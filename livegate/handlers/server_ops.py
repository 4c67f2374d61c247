"""What the server API does to the connections of this node: disconnect, unsubscribe,
subscribe and refresh users. The API sends each operation to every node (api/control.py);
each node applies it here to its own connections."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from livegate.errors import ClientError, DisconnectRequested
from livegate.handlers.subscribe import Grant, subscribe_channel
from livegate.handlers.unsubscribe import remove_subscription
from livegate.protocol import codes
from livegate.protocol.codec import encode_push, encode_subscribe_push, encode_unsubscribe_push
from livegate.protocol.codes import Disconnect
from livegate.protocol.commands import SubscribeRequest

if TYPE_CHECKING:
    from livegate.handlers.client import Client
    from livegate.node import Node

__all__ = ["disconnect_local", "unsubscribe_local", "subscribe_local", "refresh_local"]


def _targets(node: Node, user: str, client_id: str | None) -> list[Client]:
    conns: list[Any] = node.hub.user_connections(user)
    if client_id:
        conns = [c for c in conns if c.client_id == client_id]
    return conns


def disconnect_local(node: Node, user: str, client_id: str | None, whitelist: list[str] | None,
                     code: int, reason: str) -> int:
    keep = set(whitelist or ())
    done = 0
    for client in _targets(node, user, client_id):
        if client.client_id not in keep:
            client.close(Disconnect(code, reason))
            done += 1
    return done


async def unsubscribe_local(node: Node, user: str, channel: str, client_id: str | None) -> int:
    done = 0
    for client in _targets(node, user, client_id):
        if channel in client.subs:
            await remove_subscription(client, channel)
            client.write(encode_unsubscribe_push(channel, codes.UNSUB_SERVER.code, codes.UNSUB_SERVER.reason))
            done += 1
    return done


async def subscribe_local(node: Node, user: str, channel: str, client_id: str | None, *,
                          info: bytes | None, data: bytes | None, recover_since: tuple[int, str] | None,
                          override: dict[str, Any] | None, expire_at: float) -> int:
    resolved = node.rules.resolve(channel)
    done = 0
    for client in _targets(node, user, client_id):
        if channel in client.subs or client.closing is not None:
            continue
        req = SubscribeRequest(channel=channel, recover=recover_since is not None,
                               offset=recover_since[0] if recover_since else 0,
                               epoch=recover_since[1] if recover_since else "")
        try:
            result, followup = await subscribe_channel(
                client, resolved, req, Grant(info, data, expire_at, override), server_side=True)
        except (ClientError, DisconnectRequested):
            continue
        # The subscribe push has no publications field: recovered ones follow as pub pushes.
        recovered = result.pop("publications", ())
        result.pop("recovered", None)
        result.pop("was_recovering", None)
        client.write(encode_subscribe_push(channel, result))
        for pub in recovered:
            client.write(encode_push(channel, "pub", pub))
        pending = followup()
        if pending is not None:
            await pending
        done += 1
    return done


def refresh_local(node: Node, user: str, client_id: str | None, *, expired: bool, expire_at: float | None,
                  info: bytes | None) -> int:
    done = 0
    for client in _targets(node, user, client_id):
        if expired:
            client.close(codes.EXPIRED)
        else:
            if expire_at is not None:
                client.expire_at = expire_at
            if info is not None:
                client.conn_info = info
        done += 1
    return done
