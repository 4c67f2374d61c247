"""Session: the protocol core plus what the node, the cluster and the server do to a
connection from outside (``livegate.cluster.Connection``): server-side subscribe,
unsubscribe and refresh, recovery after an engine gap, subscription expiry, and release
when the connection ends."""

from __future__ import annotations

import logging
from typing import Any

from livegate.channels.names import ResolvedChannel
from livegate.errors import ClientError, DisconnectRequested
from livegate.protocol import codes
from livegate.protocol.codec import Unencodable
from livegate.protocol.commands import SubscribeRequest
from livegate.session.core import SessionCore, State
from livegate.session.subscriptions import Grant, remove_subscription, subscribe_channel

__all__ = ["Session"]

log = logging.getLogger("livegate.client")


class Session(SessionCore):
    __slots__ = ()

    async def server_subscribe(self, resolved: ResolvedChannel, *, info: bytes | None, data: bytes | None,
                               recover_since: tuple[int, str] | None, override: dict[str, Any] | None,
                               expire_at: float) -> bool:
        channel = resolved.name
        if channel in self.subs or self.closing is not None:
            return False
        if resolved.options.subscription_type != "stream":
            log.info("server-side subscription to a %s channel skipped", resolved.options.subscription_type,
                     extra={"client": self.client_id, "user": self.user, "channel": channel})
            return False
        req = SubscribeRequest(channel=channel, recover=recover_since is not None,
                               offset=recover_since[0] if recover_since else 0,
                               epoch=recover_since[1] if recover_since else "")
        try:
            result, flight = await subscribe_channel(
                self, resolved, req, Grant(info, data, expire_at, override), server_side=True)
        except (ClientError, DisconnectRequested):
            return False
        # The subscribe push has no publications: recovered ones follow as pub pushes.
        codec = self.codec
        try:
            pushes = [codec.encode_subscribe(channel, result)]
            pushes += [codec.encode_publication(channel, pub) for pub in result.publications if result.recovered]
        except Unencodable:
            self.close(codes.INAPPROPRIATE_PROTOCOL)
            return False
        for push in pushes:
            self.write(push)
        pending = flight.complete()
        if pending is not None:
            await pending
        return True

    def server_message(self, data: bytes) -> None:
        try:
            message = self.codec.encode_message(data)
        except Unencodable:
            self.close(codes.INAPPROPRIATE_PROTOCOL)
            return
        self.write(message)

    async def server_unsubscribe(self, channel: str) -> bool:
        if self.map_pending and self.map_pending.pop(channel, None) is not None:
            # A map subscribe still paging: it must not go live with its next command.
            self.write(self.codec.encode_unsubscribe(channel, codes.UNSUB_SERVER.code, codes.UNSUB_SERVER.reason))
            return True
        if channel not in self.subs:
            return False
        await remove_subscription(self, channel)
        self.write(self.codec.encode_unsubscribe(channel, codes.UNSUB_SERVER.code, codes.UNSUB_SERVER.reason))
        return True

    def server_refresh(self, *, expired: bool, expire_at: float | None, info: bytes | None) -> None:
        if expired:
            self.close(codes.EXPIRED)
            return
        if expire_at is not None:
            self.expire_at = expire_at
        if info is not None:
            self.conn_info = info

    async def restart_subscription(self, channel: str) -> None:
        """The channel's state started over (a map cleared): the subscriber subscribes again
        (unsubscribe push 2500), and finds a new epoch."""
        if channel not in self.subs:
            return
        await remove_subscription(self, channel)
        unsub = codes.UNSUB_INSUFFICIENT_STATE
        self.write(self.codec.encode_unsubscribe(channel, unsub.code, unsub.reason))

    def unsubscribe_insufficient(self, channel: str) -> None:
        """A shared poll channel's versions started over (new backend epoch): the subscriber
        subscribes again (unsubscribe push 2500)."""
        sub = self.subs.get(channel)
        if sub is None or not sub.shared_poll:
            return
        del self.subs[channel]
        self.node.shared_poll.untrack(channel, self)
        unsub = codes.UNSUB_INSUFFICIENT_STATE
        self.write(self.codec.encode_unsubscribe(channel, unsub.code, unsub.reason))

    async def recover_channel(self, channel: str) -> bool:
        sub = self.subs.get(channel)
        if sub is None or not sub.recoverable:
            return False
        if sub.server_side:
            self.close(codes.INSUFFICIENT_STATE)  # a server-side subscription recovers on reconnect
            return True
        await remove_subscription(self, channel)
        unsub = codes.UNSUB_INSUFFICIENT_STATE
        self.write(self.codec.encode_unsubscribe(channel, unsub.code, unsub.reason))
        return True

    async def expire_subscription(self, channel: str) -> None:
        """The subscription token of ``channel`` expired and was not refreshed in time."""
        sub = self.subs.get(channel)
        grace = self.node.config.client.expired_close_delay
        if sub is None or not sub.expire_at or self.node.clock.time() <= sub.expire_at + grace:
            return  # refreshed or replaced while earlier expiries were being removed
        await remove_subscription(self, channel)
        self.write(self.codec.encode_unsubscribe(channel, codes.UNSUB_EXPIRED.code, codes.UNSUB_EXPIRED.reason))

    async def release(self) -> None:
        """Everything a connection held goes when it ends: hub entry, subscriptions, presence."""
        node = self.node
        if self.closing is None:
            self.closing = codes.CONNECTION_CLOSED
        was_connected = self.state is State.CONNECTED
        self.state = State.CLOSED
        if was_connected:
            node.hub.remove_connection(self)
            node.limits.leave_user(self.limiter, self.user)
        # Also subscriptions a connect was still setting up when the socket went away.
        for channel in list(self.subs):
            await remove_subscription(self, channel)
        if not was_connected:
            return
        await node.remove_user_connection(self.user, self.client_id)
        hook = node.app.disconnect_hook
        if hook is not None:
            try:
                await self.call_app(hook, self.closing.code, self.closing.reason)
            except Exception:
                log.exception("on_disconnect hook failed", extra={"client": self.client_id, "user": self.user})
