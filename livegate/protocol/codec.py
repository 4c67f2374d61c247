"""The codec seam: how commands, replies and pushes become bytes, and how a codec and a
transport's framing meet (a ``Wire``).

A codec turns one inbound frame into typed commands and typed results and pushes into
encoded messages; several messages join into one frame. Nothing here does I/O. The
session, the handlers and the hub only ever talk to this protocol, so a second codec
(Protobuf) is one new module plus an entry in ``livegate.protocol.codecs.CODECS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from livegate.errors import ClientError
from livegate.protocol.commands import Request
from livegate.protocol.replies import Result, SubscribeResult
from livegate.protocol.types import ClientInfo, Publication

__all__ = ["Codec", "Command", "FrameError", "Unencodable", "Wire"]


@dataclass(frozen=True, slots=True)
class Command:
    """One decoded command.

    ``method`` is ``""`` for a pong (an empty command). ``request`` is the validated request;
    when it is None, either ``error`` is the error reply the command gets (its content is
    refused, the connection stays) or ``problem`` says why the command is malformed (the session
    closes the connection with 3501 when it reaches it, after running the ones before it).
    """

    id: int
    method: str
    request: Request | None
    problem: str = ""
    error: ClientError | None = None


class FrameError(Exception):
    """The frame as a whole is not valid protocol: the connection is closed with 3501."""


class Unencodable(Exception):
    """A codec cannot carry this content: binary data (not JSON) for a JSON connection. The
    connection it was meant for is closed with 3506 (inappropriate protocol), as Centrifugo
    does; the content is never written half-valid into a frame."""


class Codec(Protocol):
    """One encoding of the client protocol (JSON, Protobuf)."""

    #: Registry name ("json", "protobuf"); also what logs and metrics show.
    name: str
    #: Frames are binary (WebSocket opcode 2) rather than text.
    binary: bool
    #: The server's ping message (an empty reply).
    ping: bytes
    #: The payloads (``data``) it decodes are checked JSON text; else they are opaque bytes.
    json_payloads: bool

    def decode_frame(self, frame: bytes | str) -> list[Command]:
        """Split a frame into commands, in order.

        Raises:
            FrameError: the frame cannot be read at all.
        """
        ...

    # Every encode_* may raise Unencodable.
    def encode_reply(self, cid: int, method: str, result: Result) -> bytes: ...
    def encode_error(self, cid: int, err: ClientError) -> bytes: ...
    def encode_publication(self, channel: str, pub: Publication) -> bytes: ...
    def encode_publication_delta(self, channel: str, pub: Publication, data: bytes, delta: bool) -> bytes:
        """A publication to a delta-compressed subscription: ``data`` is the publication's
        data whole (``delta`` False: the base of the next delta) or a fossil delta against
        the previous one. JSON carries it as a JSON string (Unencodable when not UTF-8)."""
        ...
    def encode_join(self, channel: str, info: ClientInfo) -> bytes: ...
    def encode_leave(self, channel: str, info: ClientInfo) -> bytes: ...
    def encode_unsubscribe(self, channel: str, code: int, reason: str) -> bytes: ...
    def encode_subscribe(self, channel: str, result: SubscribeResult) -> bytes: ...
    def encode_message(self, data: bytes) -> bytes: ...
    def encode_disconnect(self, code: int, reason: str) -> bytes:
        """The disconnect push: how a transport without close codes (HTTP streaming, SSE)
        tells the client why it ends and whether to reconnect (by the code's range)."""
        ...

    def join(self, messages: Sequence[bytes]) -> bytes:
        """Several encoded messages as the body of one frame."""
        ...


@dataclass(frozen=True, eq=False, slots=True)
class Wire:
    """How messages reach one kind of connection: a codec, and a transport's framing of a
    frame body (a WebSocket frame header, an SSE ``data:`` line, ...).

    Connections that share a Wire receive byte-identical frames for the same messages, so the
    hub encodes and frames a publication once per Wire in use and hands the same bytes to
    all of them. Wires compare by identity: make one per (codec, framing) and share it.
    """

    name: str
    codec: Codec
    frame: Callable[[bytes], bytes]
    #: A unidirectional transport (uni_sse, uni_http_stream): pushes only, the client sends
    #: nothing after its connect request (so no pong is expected).
    unidirectional: bool = False
