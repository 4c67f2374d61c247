"""rpc (routed to ``@app.rpc`` handlers) and send (``@app.on_message``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from livegate.errors import DisconnectRequested
from livegate.protocol import codes
from livegate.protocol.codes import ErrMethodNotFound
from livegate.protocol.commands import RPCRequest, SendRequest
from livegate.protocol.types import Fragment, raw_json

if TYPE_CHECKING:
    from livegate.handlers.client import Client

__all__ = ["handle_rpc", "handle_send"]


async def handle_rpc(client: Client, req: RPCRequest) -> dict[str, Any]:
    handler = client.node.app.rpc_methods.get(req.method)
    if handler is None:
        raise ErrMethodNotFound()
    # Application code may take its time: let what is already queued go out first.
    client.flush()
    data = await client.call_app(handler, req.data)
    return {} if data is None else {"data": Fragment(raw_json(data))}


async def handle_send(client: Client, req: SendRequest) -> None:
    hook = client.node.app.message_hook
    if hook is None:
        raise DisconnectRequested(codes.NOT_AVAILABLE.code, codes.NOT_AVAILABLE.reason)
    await client.call_app(hook, req.data)
    return None
