"""What unidirectional transports (uni_websocket, uni_sse, uni_http_stream) change in the
JSON protocol: the client sends one ConnectRequest object and then only listens; it gets
pushes without the Reply wrapper, and the connect result as a ``connect`` push."""

from __future__ import annotations

import orjson

__all__ = ["unwrapped", "connect_command"]


def unwrapped(body: bytes) -> bytes:
    """JSON messages as a unidirectional client gets them: a push without its Reply wrapper
    (``{"push":{...}}`` -> ``{...}``), the connect result as a ``connect`` push (the reply's
    ``"id":N,`` removed); the ping ``{}`` as it is. Per frame, shared by a Wire's clients."""
    out = []
    for line in body.split(b"\n"):
        if line.startswith(b'{"push":'):
            line = line[8:-1]
        elif line.startswith(b'{"id":'):
            line = b"{" + line[line.index(b",") + 1:]
        out.append(line)
    return b"\n".join(out)


def connect_command(request: bytes) -> bytes | None:
    """The connect command for a unidirectional client's ConnectRequest (a JSON object;
    empty means ``{}``); None when it is not a JSON object."""
    request = request.strip() or b"{}"
    try:
        parsed = orjson.loads(request)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    # Raw newlines (whitespace in valid JSON) go: the JSON codec reads one command per line.
    return b'{"id":1,"connect":' + request.replace(b"\r", b"").replace(b"\n", b"") + b"}"
