"""cancel_and_wait: stopping background tasks never hangs."""

from __future__ import annotations

import asyncio

from livegate.tasks import cancel_and_wait


async def test_a_task_that_stops_is_awaited_whatever_it_raised():
    async def fails() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    task = asyncio.get_running_loop().create_task(fails())
    await asyncio.sleep(0.01)
    await cancel_and_wait(task)  # its exception is retrieved, not raised
    assert task.done()
    sleeper = asyncio.get_running_loop().create_task(asyncio.sleep(10))
    await cancel_and_wait(sleeper)
    assert sleeper.cancelled()
    await cancel_and_wait(None)


async def test_a_task_that_ignores_cancellation_is_left_behind_after_the_timeout(caplog):
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # swallows cancellation, as a stuck client library can

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await cancel_and_wait(task, timeout=0.1)
    assert loop.time() - started < 1.0 and not task.done()
    assert "background task did not stop" in caplog.text
    release.set()
    await task
