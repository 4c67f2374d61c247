"""publish: a client publishes into a channel; it receives its own publication like any subscriber."""

from __future__ import annotations

from livegate.errors import BrokerError
from livegate.protocol.codes import ErrBadRequest, ErrInternal
from livegate.protocol.commands import PublishRequest
from livegate.protocol.replies import EMPTY, EmptyResult
from livegate.session import Session
from livegate.session.access import require
from livegate.session.payloads import payload_bytes, payload_value

__all__ = ["handle_publish"]


async def handle_publish(session: Session, req: PublishRequest) -> EmptyResult:
    if not req.channel:
        raise ErrBadRequest()
    node = session.node
    resolved = node.rules.resolve(req.channel)
    data = req.data
    data_is_json = session.codec.json_payloads
    if data is None:
        if resolved.options.publication_data_format != "binary":
            raise ErrBadRequest(message="bad request: publication data is empty")
        data = b""
    hook = node.app.publish_hook
    decision = None if hook is None else await session.call_app(hook, req.channel, payload_value(data))
    if isinstance(decision, dict):
        if "data" in decision:
            data = payload_bytes(decision["data"]) or b""
            data_is_json = not isinstance(decision["data"], bytes | bytearray | memoryview)
    elif not decision:
        require(session, resolved, "publish")
    sub = session.subs.get(req.channel)
    info = session.info(sub.info.chan_info if sub is not None else None)
    try:
        await node.publish(req.channel, data, info=info, data_is_json=data_is_json)
    except BrokerError as exc:
        raise ErrInternal() from exc
    return EMPTY
