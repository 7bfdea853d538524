"""stream_in_thread: an early exit of the consumer stops the producer thread."""

import asyncio
import threading
import time
from contextlib import aclosing

import pytest

from avatarchat.threads import stream_in_thread


class Producer:
    """An endless blocking producer that records how far it got and whether it was stopped."""

    def __init__(self, delay=0.002):
        self.delay, self.produced, self.exited = delay, 0, threading.Event()
        self.saw_stop = False

    def __call__(self, stop):
        try:
            while not stop.is_set():
                time.sleep(self.delay)  # "inference"
                self.produced += 1
                yield self.produced
            self.saw_stop = True
        finally:
            self.exited.set()


async def assert_stopped(producer):
    assert await asyncio.to_thread(producer.exited.wait, 2.0), "producer thread still running"
    n = producer.produced
    await asyncio.sleep(0.05)
    assert producer.produced == n


async def test_consumer_break_stops_the_producer():
    producer = Producer()
    got = []
    async with aclosing(stream_in_thread(producer, maxsize=2)) as items:
        async for item in items:
            got.append(item)
            if len(got) == 3:
                break
    assert got == [1, 2, 3]
    await assert_stopped(producer)
    assert producer.produced <= 3 + 2 + 2  # at most a full queue and one item in hand


async def test_plain_break_without_aclosing_also_stops_it():
    producer = Producer()
    async for item in stream_in_thread(producer):
        if item == 2:
            break
    await assert_stopped(producer)


async def test_cancelling_the_consumer_task_stops_the_producer():
    producer = Producer(delay=0.01)

    async def consume():
        async for _ in stream_in_thread(producer):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_stopped(producer)


async def test_producer_errors_reach_the_consumer():
    def failing(stop):
        yield 1
        raise ValueError("model exploded")

    got = []
    with pytest.raises(ValueError, match="model exploded"):
        async for item in stream_in_thread(failing):
            got.append(item)
    assert got == [1]


async def test_the_event_loop_keeps_running_while_the_producer_blocks():
    def slow(stop):
        time.sleep(0.3)
        yield "done"

    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    assert [x async for x in stream_in_thread(slow)] == ["done"]
    t.cancel()
    assert ticks >= 10
