"""The livegate exception tree.

* LivegateError
    * ClientError              error reply to one command; the connection stays open.
                               One subclass per wire code (see livegate.protocol.codes).
    * DisconnectRequested      closes the connection with a Centrifugo disconnect code.
    * BrokerError              the engine (memory, redis) failed
        * BrokerUnavailable    the engine cannot be reached right now (temporary)
    * ConfigError              a configuration value is wrong; names the key
    * TokenError               a JWT could not be accepted
        * TokenExpired         exp / nbf out of range (error 109, the client refreshes)
        * TokenInvalid         signature, algorithm, claims (close 3500)
        * TokenUnverifiable    the keys to check it cannot be had right now (a JWKS endpoint is
                               down): also a ClientError, answered with error 100 (temporary),
                               so SDKs retry instead of giving up as on 3500
"""

from __future__ import annotations

__all__ = [
    "LivegateError",
    "ClientError",
    "DisconnectRequested",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigError",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "TokenUnverifiable",
]


class LivegateError(Exception):
    """Root of every error livegate raises on purpose."""


class ClientError(LivegateError):
    """Sent to the client as an error reply; the connection stays open.

    Applications raise ``ClientError(code, message)`` from RPC handlers and hooks with
    their own codes (400-1999). Built-in errors are subclasses with class-level codes.
    """

    code: int = 100
    message: str = "internal server error"
    temporary: bool = False

    def __init__(self, code: int | None = None, message: str | None = None, *, temporary: bool | None = None) -> None:
        # Instance attributes shadow the class defaults only when given.
        if code is not None:
            self.code = code
        if message is not None:
            self.message = message
        if temporary is not None:
            self.temporary = temporary
        super().__init__(f"{self.code}: {self.message}")


class DisconnectRequested(LivegateError):
    """Raised by a handler or hook to close the connection with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class BrokerError(LivegateError):
    """The engine failed to do what was asked."""


class BrokerUnavailable(BrokerError):
    """The engine cannot be reached right now; callers may retry."""


class ConfigError(LivegateError):
    """A configuration value is wrong. The message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key


class TokenError(LivegateError):
    """A JWT could not be accepted."""


class TokenExpired(TokenError):
    """The token's exp (or nbf) puts it outside its validity window."""


class TokenInvalid(TokenError):
    """The token is malformed, badly signed, uses a forbidden algorithm or has wrong claims."""


class TokenUnverifiable(TokenError, ClientError):
    """The token may be fine, but the keys to verify it cannot be fetched right now."""

    code = 100
    message = "internal server error: cannot verify tokens right now"
    temporary = True
