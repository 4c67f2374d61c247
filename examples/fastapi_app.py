"""A FastAPI service that publishes into livegate channels with the async publisher.

    pip install fastapi uvicorn
    LIVEGATE_REDIS=redis://127.0.0.1:6379/0 uvicorn examples.fastapi_app:app
    curl -X POST 'http://127.0.0.1:8000/orders/42/state?state=paid'

The work of the endpoint is ``publish_order_update``, a plain async function that takes the
publisher, so it runs (and is tested) without FastAPI. The livegate config needs the
``orders`` namespace, e.g.::

    [[channel.namespaces]]
    name = "orders"
    history_size = 100
    history_ttl = "10m"
    allow_subscribe_for_client = true

Pick the door with ``LIVEGATE_DOOR``: ``redis`` (FCALL into the servers' Redis, the
default), ``stream`` (the Redis API stream) or ``http`` (the server HTTP API, with
``LIVEGATE_API_URL`` and ``LIVEGATE_API_KEY``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from livegate.publisher import ErrBadRequest, ErrUnknownChannel, Publisher, PublisherUnavailable


def make_publisher() -> Publisher:
    """The publisher the environment asks for."""
    door = os.environ.get("LIVEGATE_DOOR", "redis")
    prefix = os.environ.get("LIVEGATE_PREFIX", "livegate")
    if door == "http":
        return Publisher.http(os.environ.get("LIVEGATE_API_URL", "http://127.0.0.1:8001/api"),
                              api_key=os.environ.get("LIVEGATE_API_KEY"))
    address = os.environ.get("LIVEGATE_REDIS", "redis://127.0.0.1:6379/0")
    if door == "stream":
        return Publisher.stream(address, prefix=prefix)
    return Publisher.redis(address.split(","), prefix=prefix)  # several addresses: sharded channels


async def publish_order_update(publisher: Publisher, order_id: int, state: str) -> dict[str, Any]:
    """Tell the subscribers of ``orders:<id>`` the order's new state.

    The idempotency key makes a retried request (a client retrying after a timeout, a second
    worker taking the same job) publish once. Through the stream door ``wait`` returns once a
    livegate instance ran the command (and raises what it failed with); through the other
    doors the publish itself is final and ``wait`` returns at once."""
    result = await publisher.publish(f"orders:{order_id}", {"order": order_id, "state": state},
                                     idempotency_key=f"order-{order_id}-{state}")
    await publisher.wait(result)
    return {"channel": f"orders:{order_id}", "offset": result.offset, "epoch": result.epoch}


try:
    from fastapi import FastAPI, HTTPException, Request
except ImportError:  # FastAPI is not a livegate dependency; the function above works without it
    pass
else:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with make_publisher() as publisher:  # one publisher (one connection pool) per process
            app.state.publisher = publisher
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/orders/{order_id}/state")
    async def set_order_state(order_id: int, state: str, request: Request) -> dict[str, Any]:
        try:
            return await publish_order_update(request.app.state.publisher, order_id, state)
        except (ErrUnknownChannel, ErrBadRequest) as exc:
            raise HTTPException(status_code=400, detail=exc.message) from None
        except PublisherUnavailable as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None
