"""The baseline: a minimal raw `websockets` server that subscribes to Redis and fans out with
`websockets.broadcast()`. It verifies the same JWT and speaks just enough of the protocol
(connect and subscribe replies) for the same load generator to drive it.

    python -m bench.baseline PORT REDIS_URL SECRET
"""

import sys

import jwt
import orjson
import redis.asyncio as aioredis
import websockets
from websockets.asyncio.server import broadcast, serve

PORT, REDIS_URL, SECRET = int(sys.argv[1]), sys.argv[2], sys.argv[3]
subscribers: dict[str, set] = {}


async def handler(ws):
    channels = []
    try:
        async for frame in ws:
            for line in frame.split("\n"):
                cmd = orjson.loads(line)
                if "connect" in cmd:
                    jwt.decode(cmd["connect"]["token"], SECRET, algorithms=["HS256"])
                    await ws.send(orjson.dumps({"id": cmd["id"], "connect": {"client": "x"}}).decode())
                elif "subscribe" in cmd:
                    channel = cmd["subscribe"]["channel"]
                    subscribers.setdefault(channel, set()).add(ws)
                    channels.append(channel)
                    await ws.send(orjson.dumps({"id": cmd["id"], "subscribe": {}}).decode())
    except websockets.ConnectionClosed:
        pass
    finally:
        for channel in channels:
            subscribers[channel].discard(ws)


async def relay():
    pubsub = aioredis.Redis.from_url(REDIS_URL).pubsub()
    await pubsub.psubscribe("bench.*")
    async for message in pubsub.listen():
        if message["type"] == "pmessage":
            broadcast(subscribers.get(message["channel"][6:].decode(), ()), message["data"], text=True)


async def main():
    async with serve(handler, "127.0.0.1", PORT, ping_interval=None, compression=None, max_queue=None):
        await relay()


if __name__ == "__main__":
    import uvloop  # the same event loop livegate runs on, for a like-for-like comparison

    uvloop.run(main())
