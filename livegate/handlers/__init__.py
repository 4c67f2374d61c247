"""One handler per client command, routed through an explicit table.

A handler takes the Session and a typed request (livegate.protocol.commands). It returns a
typed result (livegate.protocol.replies), or ``(result, followup)`` when something must
happen right after the reply is queued, or ``None`` for commands without a reply; it raises
``ClientError`` for an error reply or ``DisconnectRequested`` to close the connection.
Handlers never see bytes of a particular codec.
"""

from __future__ import annotations

from livegate.handlers.connect import handle_connect
from livegate.handlers.history import handle_history
from livegate.handlers.presence import handle_presence, handle_presence_stats
from livegate.handlers.publish import handle_publish
from livegate.handlers.refresh import handle_refresh, handle_sub_refresh
from livegate.handlers.rpc import handle_ping, handle_rpc, handle_send
from livegate.handlers.subscribe import handle_subscribe
from livegate.handlers.unsubscribe import handle_unsubscribe
from livegate.protocol.commands import REQUESTS
from livegate.session.core import Handler

__all__ = ["HANDLERS"]

HANDLERS: dict[str, Handler] = {
    "connect": handle_connect,
    "subscribe": handle_subscribe,
    "unsubscribe": handle_unsubscribe,
    "publish": handle_publish,
    "presence": handle_presence,
    "presence_stats": handle_presence_stats,
    "history": handle_history,
    "rpc": handle_rpc,
    "send": handle_send,
    "refresh": handle_refresh,
    "sub_refresh": handle_sub_refresh,
    "ping": handle_ping,
}
assert HANDLERS.keys() == REQUESTS.keys(), "every request type needs a handler"
