"""How the taker waits between its rounds: a pause, a blocking ``idle``, a stop.

A round of the taker (``taking.py``) that took nothing waits: until the
nearest deadline of a batch waiting in the broker, until the batcher's
next change (room for a task whose slots all run), or, when nothing
waits, in the source's ``idle`` until a send wakes it (at most
``IDLE_SECONDS`` per call). A stop ends every wait at once; an ``idle``
in flight is then cancelled (a blocking wait for a send: nothing to lose).
"""

import asyncio
from typing import Any

from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.batch_source import BatchSource

#: Seconds one ``idle`` call blocks at most when nothing waits.
IDLE_SECONDS = 2.0


class Waits:
    """The taker's waits between rounds, and its stop (made as it starts)."""

    def __init__(self) -> None:
        self._stop = asyncio.Event()
        #: The ``idle`` call in flight, and the tasks it watches.
        self._idle: tuple[frozenset[str], asyncio.Future[None]] | None = None

    @property
    def stopped(self) -> bool:
        """Whether the taker was told to stop."""
        return self._stop.is_set()

    def stop(self) -> None:
        """End the wait in progress and every one to come."""
        self._stop.set()
        if self._idle is not None:
            self._idle[1].cancel()  # a blocking wait for a send: nothing to lose

    async def until_woken(
        self,
        source: BatchSource,
        quiet: list[BatchSpec],
        change: "asyncio.Future[None] | None",
    ) -> None:
        """Block until a send (``idle``), a stop, or room for a blocked task.

        An ``idle`` left by room coming back is not cancelled: the next
        round waits on it again, unless it watches fewer tasks than are
        quiet now (a second one then watches them all).

        :param source: the batch source.
        :param quiet: the tasks with nothing waiting.
        :param change: resolved when room may have come for a blocked task
            (since the round began), or None when none is blocked.
        """
        names = frozenset(spec.task_name for spec in quiet)
        if self._idle is None or not names <= self._idle[0]:
            future = asyncio.ensure_future(source.idle(quiet, IDLE_SECONDS))
            future.add_done_callback(_retrieve)
            self._idle = (names, future)
        idle = self._idle[1]
        await self.pause(None, idle, change)
        if idle.done():
            self._idle = None
            if not idle.cancelled():  # cancelled: the worker stops
                idle.result()  # its error is this round's

    async def pause(
        self, seconds: float | None, *wake: "asyncio.Future[Any] | None"
    ) -> None:
        """Wait ``seconds`` (None: no limit), or until a stop or one of ``wake``."""
        stopping = asyncio.ensure_future(self._stop.wait())
        futures = {stopping, *(future for future in wake if future is not None)}
        try:
            await asyncio.wait(
                futures, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()


def _retrieve(future: "asyncio.Future[None]") -> None:
    """An ``idle`` no round waits on any more: its error is not news."""
    if not future.cancelled():
        future.exception()
