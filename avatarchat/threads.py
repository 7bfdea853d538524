"""Run blocking model code off the event loop, with cancellation that reaches the worker thread.

Replicas serve many streams on one asyncio loop; a model call that blocks the loop would stall every
other session's stream. Blocking calls run in threads; a blocking *generator* (token or audio
streams) runs in a thread that feeds a bounded queue and stops at its next item once the consumer
is cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


async def stream_in_thread(make_iter: Callable[[threading.Event], Iterator[T]],
                           maxsize: int = 8) -> AsyncIterator[T]:
    """Yield the items of ``make_iter(stop)`` produced in a worker thread.

    ``stop`` is set when the consumer stops early (cancelled or closed); the iterator should check it
    between items. The queue is bounded so a fast producer waits for a slow consumer.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize)
    stop = threading.Event()

    def put(item) -> bool:
        # Blocks while the queue is full; the consumer drains the queue when it stops, which
        # releases a blocked put, so no timeout polling is needed.
        if stop.is_set():
            return False
        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
        return not stop.is_set()

    def work() -> None:
        try:
            for item in make_iter(stop):
                if stop.is_set() or not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer to re-raise
            put(err)

    worker = threading.Thread(target=work, name="stream_in_thread", daemon=True)
    worker.start()
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not queue.empty():
            queue.get_nowait()
