"""One load generator process of the many-core layout (``python -m bench --layout many-core``).

    python -m bench.loadworker '<json params>'

It opens its share of the connections (``count`` clients, indexes ``first``..), prints
``ready <seconds>`` once every one is connected and subscribed, then ``d <delivered> <frames>
<its monotonic clock>`` every 10 ms (less often when its loop is busy reading) until its stdin
closes. With ``go`` (the ceiling measurement) it sends one frame
on every connection once they are open, which makes the trivial server start writing.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import orjson

from bench.loadgen import Stats, close_clients, open_clients, ws_client_frame


def commands_for(params: dict[str, Any]) -> Any:
    if not params.get("subscribe"):
        return lambda i: []
    import jwt
    secret, channels = params["secret"], params["channels"]

    def commands(i: int) -> list[bytes]:
        token = jwt.encode({"sub": f"u{i}", "exp": int(time.time()) + 3600}, secret, algorithm="HS256")
        return [orjson.dumps({"id": 1, "connect": {"token": token}}),
                orjson.dumps({"id": 2, "subscribe": {"channel": channels[i % len(channels)]}})]
    return commands


async def main(params: dict[str, Any]) -> None:
    stats = Stats()
    first, count = params["first"], params["count"]
    make = commands_for(params)
    clients, took = await open_clients("127.0.0.1", params["port"], params["path"], count,
                                       lambda i: make(first + i), stats)
    if params.get("go"):
        for c in clients:
            c.transport.write(ws_client_frame(b"go"))
    out = sys.stdout
    out.write(f"ready {took:.3f}\n")
    out.flush()
    loop = asyncio.get_running_loop()
    stdin_closed = loop.create_future()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch() -> None:
        await reader.read()
        stdin_closed.set_result(None)

    watcher = loop.create_task(watch())
    try:
        while not stdin_closed.done():
            out.write(f"d {stats.delivered} {stats.frames} {time.monotonic():.6f}\n")
            out.flush()
            await asyncio.wait([stdin_closed], timeout=0.01)
        out.write(f"d {stats.delivered} {stats.frames} {time.monotonic():.6f}\n")
        out.flush()
    finally:
        watcher.cancel()
        close_clients(clients)


if __name__ == "__main__":
    import uvloop
    uvloop.run(main(json.loads(sys.argv[1])))
