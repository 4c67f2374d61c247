"""unsubscribe (always answered with success), and removing a subscription for any reason."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from livegate.errors import BrokerError, DisconnectRequested
from livegate.protocol import codes
from livegate.protocol.commands import UnsubscribeRequest

if TYPE_CHECKING:
    from livegate.handlers.client import Client

__all__ = ["handle_unsubscribe", "remove_subscription"]


async def remove_subscription(client: Client, channel: str) -> None:
    """Forget the subscription locally and in the engine; announce the leave."""
    sub = client.subs.pop(channel, None)
    if sub is None:
        return
    node = client.node
    last = node.hub.unsubscribe(channel, client)
    try:
        if last:
            await node.broker.unsubscribe(channel)
        if sub.live and sub.presence:
            await node.presence.remove_presence(channel, client.client_id, client.user)
        if sub.live and sub.join_leave:
            await node.broker.publish_leave(channel, sub.info)
    except BrokerError:
        pass  # presence entries expire on their own; the subscription is gone locally


async def handle_unsubscribe(client: Client, req: UnsubscribeRequest) -> dict[str, Any]:
    if not req.channel:
        raise DisconnectRequested(codes.BAD_REQUEST.code, codes.BAD_REQUEST.reason)
    await remove_subscription(client, req.channel)
    return {}
