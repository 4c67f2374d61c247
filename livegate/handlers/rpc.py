"""rpc (routed to ``@app.rpc`` handlers), send (``@app.on_message``) and the v1 ping."""

from __future__ import annotations

from livegate.errors import DisconnectRequested
from livegate.protocol import codes
from livegate.protocol.codes import ErrMethodNotFound, ErrNotAvailable
from livegate.protocol.commands import PingRequest, RPCRequest, SendRequest
from livegate.protocol.replies import EMPTY, EmptyResult, RPCResult
from livegate.session import Session
from livegate.session.payloads import payload_bytes, payload_value

__all__ = ["handle_rpc", "handle_send", "handle_ping"]


async def handle_rpc(session: Session, req: RPCRequest) -> RPCResult:
    methods = session.node.app.rpc_methods
    if not methods:
        raise ErrNotAvailable()  # as Centrifugo: no RPC at all is 108; an unknown method among some is 104
    handler = methods.get(req.method)
    if handler is None:
        raise ErrMethodNotFound()
    # Application code may take its time: let what is already queued go out first.
    session.flush()
    data = await session.call_app(handler, payload_value(req.data))
    return RPCResult(payload_bytes(data))


async def handle_send(session: Session, req: SendRequest) -> None:
    hook = session.node.app.message_hook
    if hook is None:
        raise DisconnectRequested(codes.NOT_AVAILABLE.code, codes.NOT_AVAILABLE.reason)
    await session.call_app(hook, payload_value(req.data))
    return None


async def handle_ping(session: Session, req: PingRequest) -> EmptyResult:
    """The v1 ``ping`` command: neither SDK sends it; answered for tools that do."""
    return EMPTY
