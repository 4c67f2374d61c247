"""Permission rules shared by the handlers (protocol.md 9.2 decision order)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

from livegate.channels.names import ResolvedChannel
from livegate.node import Node
from livegate.protocol.codes import ErrPermissionDenied
from livegate.session.context import Subscription

__all__ = ["require", "allowed", "Caller"]

Action = Literal["publish", "presence", "history"]


class Caller(Protocol):
    """What the rules look at: who is asking, what it is subscribed to, and the node's config."""

    @property
    def user(self) -> str: ...
    @property
    def subs(self) -> Mapping[str, Subscription]: ...
    @property
    def node(self) -> Node: ...


def allowed(session: Caller, resolved: ResolvedChannel, action: Action) -> bool:
    """``allow_<action>_for_client`` (anonymous users also need ``..._for_anonymous``), then
    ``allow_<action>_for_subscriber`` (must be subscribed), then ``client.insecure``."""
    opts = resolved.options
    if getattr(opts, f"allow_{action}_for_client") and (session.user or getattr(opts, f"allow_{action}_for_anonymous")):
        return True
    if getattr(opts, f"allow_{action}_for_subscriber"):
        sub = session.subs.get(resolved.name)
        if sub is not None and sub.live:
            return True
    return session.node.config.client.insecure


def require(session: Caller, resolved: ResolvedChannel, action: Action) -> None:
    if not allowed(session, resolved, action):
        raise ErrPermissionDenied()
