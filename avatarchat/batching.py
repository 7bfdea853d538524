"""Batching concurrent calls into one model call: many sessions, one GPU pass.

A replica serves many sessions on one event loop. Each caller ``submit``s one input and awaits its
output; a worker task gathers what is waiting (up to ``max_batch``, the first input waiting up to
``wait_s`` for company) and runs ``run(inputs) -> outputs`` off the event loop, one batch at a time.
Used by the SenseVoice ASR (utterances) and MuseTalk (audio windows, faces).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(slots=True)
class _Item(Generic[In]):
    value: In
    future: asyncio.Future


class Batcher(Generic[In, Out]):
    """Runs ``run(list of inputs) -> list of outputs`` (same length, same order) in a worker thread
    on batches of concurrent ``submit`` calls: one worker task per event loop, one batch at a time,
    a bounded queue (a full one makes ``submit`` wait). A cancelled caller's input is dropped from a
    batch not yet run, or its result discarded. A failed batch fails its callers only; if the worker
    itself stops (a bug, ``close``), every waiting caller gets an error: no caller waits forever.

    ``executor`` runs the batches (default: asyncio's thread pool); batchers that share a
    one-thread executor never run model code at the same time. ``name`` is for messages."""

    def __init__(self, run: Callable[[list[In]], list[Out]], max_batch: int, wait_s: float,
                 max_queue: int, *, name: str = "batch", unhealthy_after: int = 3,
                 executor: Executor | None = None):
        self._run, self.max_batch, self.wait_s, self.max_queue = run, max_batch, wait_s, max_queue
        self.name, self.unhealthy_after, self._executor = name, unhealthy_after, executor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Item] | None = None
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._closed = False
        self.failure: BaseException | None = None  # why the worker died, if it did
        self.failed_in_a_row = 0
        self.batches = 0      # run calls made
        self.items = 0        # inputs they carried
        self.largest = 0      # the most inputs one run call carried

    @property
    def utterances(self) -> int:  # the name SenseVoice's stats use
        return self.items

    def _ensure_worker(self) -> None:
        if self._closed:
            raise RuntimeError(f"the {self.name} backend is closed")
        if self.failure is not None:
            raise RuntimeError(f"the {self.name} batch worker died: {self.failure!r}") from self.failure
        loop = asyncio.get_running_loop()
        if self._worker is not None and self._loop is loop and not self._worker.done():
            return
        # First call, or a new event loop (the old one's worker went with it).
        self._loop, self._queue, self._arrived = loop, asyncio.Queue(self.max_queue), asyncio.Event()
        self._worker = loop.create_task(self._work(self._queue, self._arrived),
                                        name=f"{self.name}-batcher")
        self._worker.add_done_callback(functools.partial(self._worker_done, self._queue))

    async def submit(self, value: In) -> Out:
        self._ensure_worker()
        queue, arrived, worker = self._queue, self._arrived, self._worker
        item = _Item(value, self._loop.create_future())
        await queue.put(item)
        arrived.set()
        if worker.done():  # it stopped while we waited for room: nobody would answer
            raise RuntimeError(f"the {self.name} batch worker stopped")
        return await item.future

    async def _work(self, queue: asyncio.Queue[_Item], arrived: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Item] = []
        try:
            while True:
                batch = [await queue.get()]
                deadline = loop.time() + self.wait_s
                while len(batch) < self.max_batch:
                    if not queue.empty():
                        batch.append(queue.get_nowait())
                        continue
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    arrived.clear()
                    try:
                        await asyncio.wait_for(arrived.wait(), remaining)
                    except TimeoutError:
                        break
                batch = [it for it in batch if not it.future.done()]  # callers cancelled meanwhile
                if batch:
                    await self._run_batch(batch)
                batch = []
        except BaseException as err:
            reason = err if isinstance(err, Exception) else RuntimeError(f"the {self.name} batcher stopped")
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(reason)
            raise

    async def _run_batch(self, batch: list[_Item]) -> None:
        self.batches += 1
        self.items += len(batch)
        self.largest = max(self.largest, len(batch))
        try:
            inputs = [it.value for it in batch]
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, inputs)
            if len(outputs) != len(batch):
                raise RuntimeError(f"{self.name} returned {len(outputs)} results for {len(batch)} inputs")
        except Exception as err:  # noqa: BLE001 - the batch's callers get it; the worker goes on
            self.failed_in_a_row += 1
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(err)
            return
        self.failed_in_a_row = 0
        for it, out in zip(batch, outputs):
            if not it.future.done():
                it.future.set_result(out)

    def _worker_done(self, queue: asyncio.Queue[_Item], task: asyncio.Task) -> None:
        if task.cancelled():
            reason: BaseException = RuntimeError(f"the {self.name} batcher stopped")
        else:
            self.failure = task.exception()
            if self.failure is None:  # _work never returns; be safe anyway
                self.failure = RuntimeError(f"the {self.name} batch worker returned")
            reason = RuntimeError(f"the {self.name} batch worker died: {self.failure!r}")
        while not queue.empty():
            it = queue.get_nowait()
            if not it.future.done():
                it.future.set_exception(reason)

    def check(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"the {self.name} batch worker died: {self.failure!r}") from self.failure
        if self.failed_in_a_row >= self.unhealthy_after:
            raise RuntimeError(f"the last {self.failed_in_a_row} {self.name} batches failed")

    def close(self) -> None:
        self._closed = True
        worker, loop = self._worker, self._loop
        if worker is None or worker.done() or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            worker.cancel()
        else:
            loop.call_soon_threadsafe(worker.cancel)
