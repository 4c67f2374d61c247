"""Channel names: namespace, private (``$``) and user-limited (``#``) channels, validation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from livegate.config import Channel, ChannelOptions
from livegate.protocol.codes import ErrBadRequest, ErrUnknownChannel

__all__ = ["ChannelRules", "ResolvedChannel"]


@dataclass(frozen=True, slots=True)
class ResolvedChannel:
    name: str
    options: ChannelOptions
    private: bool
    allowed_users: tuple[str, ...] | None  # users of a "#" channel, or None

    def user_allowed(self, user: str) -> bool:
        return self.allowed_users is not None and user != "" and user in self.allowed_users


class ChannelRules:
    """Resolves channel names to their namespace options. Results are cached."""

    def __init__(self, cfg: Channel) -> None:
        self._cfg = cfg
        self._namespaces = {ns.name: ns for ns in cfg.namespaces}
        self._regex = {ns.name: re.compile(ns.channel_regex) for ns in cfg.namespaces if ns.channel_regex}
        if cfg.without_namespace.channel_regex:
            self._regex[""] = re.compile(cfg.without_namespace.channel_regex)
        self.resolve = lru_cache(maxsize=65536)(self._resolve)

    def _resolve(self, channel: str) -> ResolvedChannel:
        """Raises ErrBadRequest (107) for an invalid name, ErrUnknownChannel (102) for an unknown namespace."""
        cfg = self._cfg
        if not channel or len(channel.encode()) > cfg.max_length:
            raise ErrBadRequest(message="bad request: channel name empty or too long")
        private = bool(cfg.private_prefix) and channel.startswith(cfg.private_prefix)
        rest = channel[len(cfg.private_prefix):] if private else channel
        ns_name, sep, local = rest.partition(cfg.namespace_boundary) if cfg.namespace_boundary else ("", "", rest)
        if sep and cfg.user_boundary and cfg.user_boundary in ns_name:
            sep = ""  # the user boundary comes first: a user channel without namespace ("#org:42")
        if not sep:
            ns_name, local = "", rest
            options: ChannelOptions = cfg.without_namespace
        else:
            ns = self._namespaces.get(ns_name)
            if ns is None:
                raise ErrUnknownChannel()
            options = ns
        regex = self._regex.get(ns_name)
        if regex is not None:
            if not regex.fullmatch(local):
                raise ErrBadRequest(message="bad request: channel name does not match channel_regex")
        elif not channel.isascii() or any(c in channel for c in "\n\r\t ") or not channel.isprintable():
            raise ErrBadRequest(message="bad request: channel name must be printable ASCII")
        allowed_users = None
        if cfg.user_boundary and cfg.user_boundary in local:
            users = local.rsplit(cfg.user_boundary, 1)[1]
            allowed_users = tuple(u for u in users.split(cfg.user_separator) if u)
        return ResolvedChannel(channel, options, private, allowed_users)
