"""A FastAPI service that publishes into livegate channels with the async publisher.

    pip install fastapi uvicorn
    LIVEGATE_REDIS=redis://127.0.0.1:6379/0 uvicorn examples.fastapi_app:app --port 8080
    curl -X POST 'http://127.0.0.1:8080/orders/42/state?state=paid'

(Port 8080: uvicorn's default, 8000, is livegate's client port.) The endpoint's work is in
plain async functions that take the publisher, so they run (and are tested) without FastAPI:
``publish_order_update`` publishes, ``order_state_answer`` turns the outcome into the HTTP
status and body. The livegate config needs the ``orders`` namespace, e.g.::

    [[channel.namespaces]]
    name = "orders"
    history_size = 100
    history_ttl = "10m"
    allow_subscribe_for_client = true

Pick the door with ``LIVEGATE_DOOR``: ``redis`` (FCALL into the servers' Redis, the
default), ``stream`` (the Redis API stream) or ``http`` (the server HTTP API, with
``LIVEGATE_API_URL`` and ``LIVEGATE_API_KEY``). ``LIVEGATE_REDIS`` is
``engine.redis.address``: one URL, or several separated by commas when channels are sharded.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from livegate.publisher import ClientError, ErrBadRequest, ErrUnknownChannel, Publisher, PublisherUnavailable


def make_publisher() -> Publisher:
    """The publisher the environment asks for."""
    door = os.environ.get("LIVEGATE_DOOR", "redis")
    prefix = os.environ.get("LIVEGATE_PREFIX", "livegate")
    if door == "http":
        return Publisher.http(os.environ.get("LIVEGATE_API_URL", "http://127.0.0.1:8001/api"),
                              api_key=os.environ.get("LIVEGATE_API_KEY"))
    addresses = os.environ.get("LIVEGATE_REDIS", "redis://127.0.0.1:6379/0").split(",")
    if door == "stream":
        return Publisher.stream(addresses, prefix=prefix)  # the stream lives on the first server
    return Publisher.redis(addresses, prefix=prefix)  # several addresses: sharded channels


async def publish_order_update(publisher: Publisher, order_id: int, state: str, *,
                               wait_timeout: float = 10.0) -> dict[str, Any]:
    """Tell the subscribers of ``orders:<id>`` the order's new state.

    The idempotency key makes a retried request (a client retrying after a timeout, a second
    worker taking the same job) publish once. Through the stream door ``wait`` returns once a
    livegate instance ran the command (and raises what it failed with); through the other
    doors the publish itself is final and ``wait`` returns at once."""
    result = await publisher.publish(f"orders:{order_id}", {"order": order_id, "state": state},
                                     idempotency_key=f"order-{order_id}-{state}")
    await publisher.wait(result, timeout=wait_timeout)
    return {"channel": f"orders:{order_id}", "offset": result.offset, "epoch": result.epoch}


async def order_state_answer(publisher: Publisher, order_id: int, state: str, *,
                             wait_timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """The endpoint's HTTP status and JSON body.

    200 and the position; 400 for what the request got wrong (a namespace livegate does not
    know, data it refuses); 503 when livegate cannot be reached (retrying is safe: the
    idempotency key); 504 when a stream entry was not run in time; 502 with livegate's
    message for any other error livegate answered."""
    try:
        return 200, await publish_order_update(publisher, order_id, state, wait_timeout=wait_timeout)
    except (ErrUnknownChannel, ErrBadRequest) as exc:
        return 400, {"detail": exc.message}
    except PublisherUnavailable as exc:
        return 503, {"detail": str(exc)}
    except TimeoutError as exc:
        return 504, {"detail": str(exc)}
    except ClientError as exc:
        return 502, {"detail": exc.message, "code": exc.code}


try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
except ImportError:  # FastAPI is not a livegate dependency; the functions above work without it
    pass
else:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with make_publisher() as publisher:  # one publisher (one connection pool) per process
            app.state.publisher = publisher
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/orders/{order_id}/state")
    async def set_order_state(order_id: int, state: str, request: Request) -> JSONResponse:
        status, body = await order_state_answer(request.app.state.publisher, order_id, state)
        return JSONResponse(body, status_code=status)
