"""One handler per client command, routed through an explicit table.

A handler takes the Client and a typed request. It returns the reply's result (a dict), or
``(result, followup)`` when something must happen right after the reply is queued, or
``None`` for commands without a reply; it raises ``ClientError`` for an error reply or
``DisconnectRequested`` to close the connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from livegate.handlers.connect import handle_connect
from livegate.handlers.history import handle_history
from livegate.handlers.presence import handle_presence, handle_presence_stats
from livegate.handlers.publish import handle_publish
from livegate.handlers.refresh import handle_refresh, handle_sub_refresh
from livegate.handlers.rpc import handle_rpc, handle_send
from livegate.handlers.subscribe import handle_subscribe
from livegate.handlers.unsubscribe import handle_unsubscribe
from livegate.protocol import commands as c

__all__ = ["HANDLERS"]


async def handle_ping(client: Any, req: c.PingRequest) -> dict[str, Any]:
    """The v1 ``ping`` command: neither SDK sends it; answered for tools that do."""
    return {}


HANDLERS: dict[str, tuple[type[c.Request], Callable[[Any, Any], Awaitable[Any]]]] = {
    "connect": (c.ConnectRequest, handle_connect),
    "subscribe": (c.SubscribeRequest, handle_subscribe),
    "unsubscribe": (c.UnsubscribeRequest, handle_unsubscribe),
    "publish": (c.PublishRequest, handle_publish),
    "presence": (c.PresenceRequest, handle_presence),
    "presence_stats": (c.PresenceStatsRequest, handle_presence_stats),
    "history": (c.HistoryRequest, handle_history),
    "rpc": (c.RPCRequest, handle_rpc),
    "send": (c.SendRequest, handle_send),
    "refresh": (c.RefreshRequest, handle_refresh),
    "sub_refresh": (c.SubRefreshRequest, handle_sub_refresh),
    "ping": (c.PingRequest, handle_ping),
}
