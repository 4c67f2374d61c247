"""publish: a client publishes into a channel; it receives its own publication like any subscriber."""

from __future__ import annotations

from livegate.channels.names import ResolvedChannel
from livegate.errors import BrokerError
from livegate.protocol.codes import ErrBadRequest, ErrInternal, ErrPermissionDenied
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
    if req.type != 0 or resolved.options.is_map:
        return await handle_map_write(session, resolved, req)
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


async def handle_map_write(session: Session, resolved: ResolvedChannel, req: PublishRequest) -> EmptyResult:
    """publish with ``type`` 1: write (or, with ``removed``, remove) the map entry ``key``.
    Allowed by the namespace's ``map.allow_publish_*`` / ``map.allow_remove_*`` options."""
    if req.type != 1:
        raise ErrBadRequest(message=f"bad request: {req.channel!r} is a map channel: publish with type 1 and a key")
    if not resolved.options.is_map:
        raise ErrBadRequest(message=f"bad request: {req.channel!r} is not a map channel")
    if resolved.options.subscription_type != "map":
        raise ErrPermissionDenied(message="permission denied: map presence channels are kept by the server")
    action = "remove" if req.removed else "publish"
    opts = resolved.options.map
    sub = session.subs.get(req.channel)
    who = bool(session.user) or getattr(opts, f"allow_{action}_for_anonymous")
    if not ((getattr(opts, f"allow_{action}_for_client") and who)
            or (getattr(opts, f"allow_{action}_for_subscriber") and who and sub is not None and sub.live)
            or session.node.config.client.insecure):
        raise ErrPermissionDenied()
    key = req.key
    if opts.client_key == "client_id":
        key = session.client_id  # each connection owns one entry, whatever key it names
    elif opts.client_key == "user_id":
        if not session.user:
            raise ErrPermissionDenied()
        key = session.user
    info = session.info(sub.info.chan_info if sub is not None else None)
    try:
        if req.removed:
            await session.node.map_remove(req.channel, key, info=info)
        else:
            data = req.data
            if data is None:
                raise ErrBadRequest(message="bad request: publication data is empty")
            await session.node.map_publish(req.channel, key, data, info=info,
                                           data_is_json=session.codec.json_payloads)
    except BrokerError as exc:
        raise ErrInternal() from exc
    return EMPTY
