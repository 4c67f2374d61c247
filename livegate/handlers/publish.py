"""publish: a client publishes into a channel; it receives its own publication like any subscriber."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from livegate.errors import BrokerError
from livegate.handlers.access import require
from livegate.protocol.codes import ErrBadRequest, ErrInternal
from livegate.protocol.commands import PublishRequest
from livegate.protocol.types import raw_json

if TYPE_CHECKING:
    from livegate.handlers.client import Client

__all__ = ["handle_publish"]


async def handle_publish(client: Client, req: PublishRequest) -> dict[str, Any]:
    if not req.channel:
        raise ErrBadRequest()
    node = client.node
    resolved = node.rules.resolve(req.channel)
    if req.data is None:
        raise ErrBadRequest(message="bad request: publication data is empty")
    data = req.data
    hook = node.app.publish_hook
    decision = None if hook is None else await client.call_app(hook, req.channel, data)
    if isinstance(decision, dict):
        data = decision.get("data", data)
    elif not decision:
        require(client, resolved, "publish")
    sub = client.subs.get(req.channel)
    info = client.info(sub.info.chan_info if sub is not None else None)
    try:
        await node.publish(req.channel, raw_json(data), info=info)
    except BrokerError as exc:
        raise ErrInternal() from exc
    return {}
