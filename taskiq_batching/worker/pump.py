"""The pump: the broker as taskiq's Receiver sees it, with batched messages taken aside.

taskiq's Receiver pulls one delivery from ``broker.listen()`` per free
slot (``--max-async-tasks`` + ``--max-prefetch``). The pump is that
listener. It reads the broker (through its transport) only while the
Receiver is pulling, so it never takes a message the Receiver could not
(``routing.py`` sorts each read):

* a message of a batched task, while the task is under its bound
  (``BatchSettings.max_held``), goes to its buffer (``Lifecycle.accept``)
  and the pump reads on, in the same pull;
* anything else (plain tasks, undecodable bytes) is handed to the
  Receiver, unchanged: it is this pull's delivery;
* a batched message over its task's bounds (messages, wire bytes, and for
  a keyed task the batches allowed to wait) is parked, in order, and the
  pump reads on: a busy task never blocks the messages behind it. Parked
  messages go to their buffers as their task gets room, before anything
  new is read. Parking is bounded in messages and bytes (``parking.py``);
  beyond, the task's messages go back to the tail of the queue, paced
  (``giving.py``), or, on a transport that cannot, the pump waits.

Batched tasks whose messages wait in the broker (``wait_in_broker``) are
taken whole by the taker (``taking.py``), beside the reads; what the pump
reads of them (a plain producer's) goes to the forwarder.

``--max-tasks-per-child`` counts every message taken. When the Receiver
stops, a read in progress is finished or interrupted by the transport's
rules (nothing taken is dropped); deliveries read but not handed over go
back to the broker; buffers flush; batches get ``--wait-tasks-timeout``
to finish, after which they are cut off and their messages left to the
broker (a log line gives their count): ``stopping.py``.
"""

import asyncio
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncGenerator
from typing import Any

from taskiq import AckableMessage, AsyncBroker

from taskiq_batching.core.batcher import Batcher
from taskiq_batching.transports.base import Transport
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.worker.acks import give_back
from taskiq_batching.worker.lifecycle import Lifecycle
from taskiq_batching.worker.options import WorkerOptions
from taskiq_batching.worker.routing import Parked, Router
from taskiq_batching.worker.stopping import stop_pump
from taskiq_batching.worker.taking import Taker

Handed = bytes | AckableMessage


class Pump:
    """Reads a broker for taskiq's Receiver and routes what it reads.

    :param broker: the broker.
    :param batcher: its batcher.
    :param lifecycle: accepts batched messages.
    :param transport: the broker's transport.
    :param options: the Receiver's settings.
    """

    def __init__(
        self,
        broker: AsyncBroker,
        batcher: Batcher,
        lifecycle: Lifecycle,
        transport: Transport,
        options: WorkerOptions,
    ) -> None:
        self.batcher = batcher
        self.lifecycle = lifecycle
        self.transport = transport
        self.options = options
        self.router = Router(broker, batcher, transport)
        self.handoff = self.router.handoff
        self.parked = self.router.parked
        self.taker = Taker(broker, batcher, lifecycle, transport, self.router, options)
        self._reading: asyncio.Future[list[Delivery]] | None = None
        self._next_reclaim = 0.0
        self._stopped = False
        #: Some task's role is passed on (``_relieve``): a batch's end wakes.
        self._passed = False

    async def deliveries(self) -> AsyncGenerator[Handed, None]:
        """The listener handed to taskiq's Receiver (see the module's docstring).

        :yield: deliveries of tasks the worker does not batch.
        """
        self.taker.start()
        try:
            while True:
                if self.handoff:
                    yield self.transport.for_receiver(self.handoff.popleft())
                    continue
                try:
                    if not await self._step():
                        return
                except asyncio.CancelledError:
                    # The Receiver stops: a delivery this pull got is still its.
                    late = self._late()
                    if late is None:
                        raise
                    yield late
                    return
        finally:
            await self.stop()

    async def _step(self) -> bool:
        """Buffer parked messages that fit, or read once and route the chunk.

        :return: False when the listener ends (``--max-tasks-per-child``
            reached, or the broker's listener ended).
        """
        if self.parked and await self._step_parked():
            return True
        if self.taker.spent:
            return False
        if self._reading is None:
            now = asyncio.get_running_loop().time()
            if await self.router.giving.rest(now, self.batcher.changed):
                return True
            limit = self.router.limit(self.options.max_tasks)
            if limit == 0:
                return False
            self._passed = self._relieve()
            self._reading = asyncio.ensure_future(self._read(limit))
        elif self._passed:  # woken by a change: a batch of such a task ended
            self._passed = self._relieve()
        reading = self._reading
        if not await self._wait_read(reading):
            return True
        self._reading = None
        try:
            chunk = reading.result()
        except StopAsyncIteration:
            return False
        await self._route(chunk)
        return True

    async def _wait_read(self, reading: "asyncio.Future[list[Delivery]]") -> bool:
        """Wait for the read, or for room for parked messages.

        If the wait is cancelled, the read is interrupted and what it took
        is routed before the cancellation goes on.

        :return: whether the read is done.
        """
        # Parked messages must not wait for the next read: room for them
        # ends the wait too (the read goes on), as does a change when taken
        # batches count towards --max-tasks-per-child. Else the read alone:
        # a done (cancelled) future beside it made the pump spin when idle.
        room: asyncio.Future[None] | None = None
        # A partial buffer of a task passed on flushes as its last batch
        # ends (``_relieve``), not at its timeout because no read came.
        if (
            self.parked
            or self._passed
            or (self.taker.active and self.options.max_tasks)
        ):
            room = self.batcher.changed()
        waits: set[asyncio.Future[Any]] = {reading}
        if room is not None:
            waits.add(room)
        try:
            await asyncio.wait(waits, return_when=FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._reading = None
            chunk = await self.transport.interrupt(reading)
            await self._settle_chunk(*self.router.sort(chunk))
            raise
        finally:
            if room is not None:
                room.cancel()
        return reading.done()

    async def _route(self, chunk: list[Delivery]) -> None:
        """Route a chunk read; a stop meanwhile waits until it is routed."""
        taken, extra = self.router.sort(chunk)
        giving = self.router.giving.pending
        if not (extra or giving or self.router.forwarding) and not (
            taken and self.lifecycle.waits(taken)
        ):
            # Accepting runs straight through: no stop can cut it short.
            await self.lifecycle.accept(taken)
            return
        routing = asyncio.ensure_future(self._settle_chunk(taken, extra))
        try:
            await asyncio.wait({routing})
        except asyncio.CancelledError:
            # What this read took is routed before the pump stops.
            await _settle(routing)
            raise
        routing.result()

    def _relieve(self) -> bool:
        """Flush what can no longer grow: nothing more comes until acks come.

        Everything when the broker sends nothing more (its prefetch is
        held); else the buffers of each task the transport says nothing
        more of comes (``Transport.passed_on``) once they hold all the
        worker has of it (no batch of it running: ``Batcher.relieve``),
        but for a task whose reads on the main queue this worker batches
        where it reads them: those buffers still grow (run before each
        read, they ran batches of a few messages).

        :return: whether the transport named such a task.
        """
        passed = self.transport.passed_on()
        prefetch = self.transport.prefetch
        if prefetch is not None and self.transport.outstanding >= prefetch:
            self.batcher.relieve_all()
        else:
            for task_name in passed:
                if not self.router.batched_where_read(task_name):
                    self.batcher.relieve(task_name)
        return bool(passed)

    async def _read(self, limit: int) -> list[Delivery]:
        interval = self.transport.reclaim_interval
        if interval is not None:
            now = asyncio.get_running_loop().time()
            if now >= self._next_reclaim:
                self._next_reclaim = now + interval
                claimed = await self.transport.reclaim()
                if claimed:
                    self.batcher.observers.reclaimed(len(claimed))
                    return claimed
        return await self.transport.read(limit)

    async def _settle_chunk(self, taken: list[Parked], extra: list[Delivery]) -> None:
        await self._release(extra, "read ahead of the Receiver")
        await self.router.giving.send(self.parked)
        await self.taker.forward()
        if taken:
            await self.lifecycle.accept(taken)

    async def _step_parked(self) -> bool:
        """Buffer the parked messages that fit now.

        :return: whether to look again before reading (some were taken,
            or parking is full and room came, or may come within the
            grace before giving back).
        """
        ready = self.router.unpark()
        giving = self.router.giving
        # Giving back, parking also counts full at half the broker's prefetch.
        full = self.router.parking_full() if giving.enabled else self.parked.full
        if ready or not full:
            giving.room_came()
        if ready:
            await self.lifecycle.accept(ready)
            return True
        if not full:
            return False
        self._relieve()
        if giving.enabled:  # past its bounds: read on, giving back, after a grace
            now = asyncio.get_running_loop().time()
            return await giving.hold_off(now, self.batcher.changed)
        await self.batcher.changed()
        return True

    def _late(self) -> Handed | None:
        """The delivery of the pull the Receiver interrupted to stop, if any."""
        if not self.handoff:
            return None
        return self.transport.for_receiver(self.handoff.popleft())

    async def stop(self) -> None:
        """Give back what was not handed over, finish or cut off batches, close.

        :raises Exception: what the broker's listener raised while closing.
        """
        if self._stopped:
            return
        self._stopped = True
        reading, self._reading = self._reading, None  # pending: a listener error
        await stop_pump(
            self.taker,
            self.router,
            self.batcher,
            self.lifecycle,
            self.transport,
            self.options,
            reading,
        )

    async def _release(self, deliveries: list[Delivery], what: str) -> None:
        await give_back(self.transport, deliveries, what)


async def _settle(future: "asyncio.Future[None]") -> None:
    """Wait for a future to finish even if this task is cancelled meanwhile."""
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            continue
    future.result()
