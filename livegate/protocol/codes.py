"""Wire codes of the Centrifuge client protocol v2: error replies, disconnects, unsubscribes.

Error replies are ``ClientError`` subclasses (raise a fresh instance; never share one).
Disconnects and unsubscribes are plain, shareable data. Code ranges decide what an SDK does:
close codes 3000-3499 and 4000-4499 reconnect, 3500-3999 and 4500-4999 are terminal;
unsubscribe codes below 2500 are terminal, 2500 and above resubscribe.
"""

from __future__ import annotations

from dataclasses import dataclass

from livegate.errors import ClientError

__all__ = [
    "ErrInternal", "ErrUnauthorized", "ErrUnknownChannel", "ErrPermissionDenied", "ErrMethodNotFound",
    "ErrAlreadySubscribed", "ErrLimitExceeded", "ErrBadRequest", "ErrNotAvailable", "ErrTokenExpired",
    "ErrExpired", "ErrTooManyRequests", "ErrUnrecoverablePosition", "ErrConflict",
    "Disconnect", "Unsubscribe",
    "CONNECTION_CLOSED", "SHUTDOWN", "INTERNAL", "EXPIRED", "SUBSCRIPTION_EXPIRED", "SLOW", "WRITE_ERROR",
    "INSUFFICIENT_STATE", "FORCE_RECONNECT", "NO_PONG", "TOO_MANY_REQUESTS", "STATE_INVALIDATED",
    "INVALID_TOKEN", "BAD_REQUEST", "STALE", "FORCE_DISCONNECT", "CONNECTION_LIMIT", "CHANNEL_LIMIT",
    "INAPPROPRIATE_PROTOCOL", "PERMISSION_DENIED", "NOT_AVAILABLE", "TOO_MANY_ERRORS",
    "UNSUB_SERVER", "UNSUB_INSUFFICIENT_STATE", "UNSUB_EXPIRED", "UNSUB_STATE_INVALIDATED",
]


class ErrInternal(ClientError):
    code, message, temporary = 100, "internal server error", True


class ErrUnauthorized(ClientError):
    code, message = 101, "unauthorized"


class ErrUnknownChannel(ClientError):
    code, message = 102, "unknown channel"


class ErrPermissionDenied(ClientError):
    code, message = 103, "permission denied"


class ErrMethodNotFound(ClientError):
    code, message = 104, "method not found"


class ErrAlreadySubscribed(ClientError):
    code, message = 105, "already subscribed"


class ErrLimitExceeded(ClientError):
    code, message = 106, "limit exceeded"


class ErrBadRequest(ClientError):
    code, message = 107, "bad request"


class ErrNotAvailable(ClientError):
    code, message = 108, "not available"


class ErrTokenExpired(ClientError):
    code, message = 109, "token expired"


class ErrExpired(ClientError):
    code, message = 110, "expired"


class ErrTooManyRequests(ClientError):
    code, message, temporary = 111, "too many requests", True


class ErrUnrecoverablePosition(ClientError):
    code, message = 112, "unrecoverable position"


class ErrConflict(ClientError):
    code, message = 113, "conflict"


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A close frame: code and plain-text reason (never JSON, at most 123 bytes)."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """An unsubscribe push: code and reason (the reason must never be empty)."""

    code: int
    reason: str


# Reconnect range.
CONNECTION_CLOSED = Disconnect(3000, "connection closed")
SHUTDOWN = Disconnect(3001, "shutdown")
INTERNAL = Disconnect(3004, "internal server error")
EXPIRED = Disconnect(3005, "connection expired")
SUBSCRIPTION_EXPIRED = Disconnect(3006, "subscription expired")
SLOW = Disconnect(3008, "slow")
WRITE_ERROR = Disconnect(3009, "write error")
INSUFFICIENT_STATE = Disconnect(3010, "insufficient state")
FORCE_RECONNECT = Disconnect(3011, "force reconnect")
NO_PONG = Disconnect(3012, "no pong")
TOO_MANY_REQUESTS = Disconnect(3013, "too many requests")
STATE_INVALIDATED = Disconnect(3014, "state invalidated")
# Terminal range.
INVALID_TOKEN = Disconnect(3500, "invalid token")
BAD_REQUEST = Disconnect(3501, "bad request")
STALE = Disconnect(3502, "stale")
FORCE_DISCONNECT = Disconnect(3503, "force disconnect")
CONNECTION_LIMIT = Disconnect(3504, "connection limit")
CHANNEL_LIMIT = Disconnect(3505, "channel limit")
INAPPROPRIATE_PROTOCOL = Disconnect(3506, "inappropriate protocol")
PERMISSION_DENIED = Disconnect(3507, "permission denied")
NOT_AVAILABLE = Disconnect(3508, "not available")
TOO_MANY_ERRORS = Disconnect(3509, "too many errors")

UNSUB_SERVER = Unsubscribe(2000, "server unsubscribe")
UNSUB_INSUFFICIENT_STATE = Unsubscribe(2500, "insufficient state")
UNSUB_EXPIRED = Unsubscribe(2501, "subscription expired")
UNSUB_STATE_INVALIDATED = Unsubscribe(2502, "state invalidated")
