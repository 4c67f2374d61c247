"""The embedding API: register RPC methods and hooks as plain async functions.

    from livegate import App, ClientError
    app = App()

    @app.rpc("echo")
    async def echo(ctx, data):
        return data

    @app.on_connect
    async def on_connect(ctx, data):
        if ctx.user == "banned":
            raise ClientError(403, "banned")     # the connect fails with this error
        return {"data": {"welcome": True}}        # optional: data, info, channels

Hook contracts:
    on_connect(ctx, data)            -> None | {"data": any, "info": any, "channels": [str]}
    on_subscribe(ctx, channel, data) -> None (no opinion: namespace rules decide)
                                        | True | {"info": any, "data": any} (granted); raise to deny
    on_publish(ctx, channel, data)   -> None (namespace rules) | True | {"data": any} (granted); raise to deny
    on_message(ctx, data)            -> None  (the client's ``send``)
    on_disconnect(ctx, code, reason) -> None
A hook or RPC handler fails the command with ``ClientError(code, message)`` (codes 400-1999
for applications) or closes the connection with ``DisconnectRequested(code, reason)``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["App", "RpcHandler"]

RpcHandler = Callable[[Any, Any], Awaitable[Any]]
_METHOD_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")


class App:
    def __init__(self) -> None:
        self.rpc_methods: dict[str, RpcHandler] = {}
        self.connect_hook: Callable[..., Awaitable[Any]] | None = None
        self.subscribe_hook: Callable[..., Awaitable[Any]] | None = None
        self.publish_hook: Callable[..., Awaitable[Any]] | None = None
        self.message_hook: Callable[..., Awaitable[Any]] | None = None
        self.disconnect_hook: Callable[..., Awaitable[Any]] | None = None
        self.shared_poll_refresh_hook: Callable[..., Awaitable[Any]] | None = None

    def rpc(self, name: str) -> Callable[[RpcHandler], RpcHandler]:
        """Register ``handler(ctx, data)`` for the client ``rpc`` command with method ``name``."""
        if not _METHOD_NAME.match(name):
            raise ValueError(f"invalid RPC method name {name!r}")

        def register(handler: RpcHandler) -> RpcHandler:
            if name in self.rpc_methods:
                raise ValueError(f"RPC method {name!r} registered twice")
            self.rpc_methods[name] = handler
            return handler

        return register

    def on_connect(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        self.connect_hook = fn
        return fn

    def on_subscribe(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        self.subscribe_hook = fn
        return fn

    def on_publish(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        self.publish_hook = fn
        return fn

    def on_message(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        self.message_hook = fn
        return fn

    def on_disconnect(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        self.disconnect_hook = fn
        return fn

    def on_shared_poll_refresh(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """``await fn(channel, items)`` polls the keys of a shared poll channel whose namespace has no
        ``shared_poll.endpoint``: ``items`` is ``[{"key": ..., "version": ...}]`` (version only in
        versioned mode, when the node has one); it returns ``{"epoch": ..., "items": [{"key",
        "data", "version", "removed"}]}``, listing only the keys that changed (or were removed)."""
        self.shared_poll_refresh_hook = fn
        return fn
