"""The pump: the broker as taskiq's Receiver sees it, with batched messages taken aside.

taskiq's Receiver pulls one delivery from ``broker.listen()`` per free
slot (``--max-async-tasks`` + ``--max-prefetch``). The pump is that
listener. It reads the broker (through its transport) only while the
Receiver is pulling, so it never takes a message the Receiver could not:

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
  beyond, the pump waits for room before it reads more.

``--max-tasks-per-child`` counts every message taken. When the Receiver
stops, a read in progress is finished or interrupted by the transport's
rules (nothing taken is dropped); deliveries read but not handed over go
back to the broker; buffers flush; batches get ``--wait-tasks-timeout``
to finish, after which they are cut off and their messages left to the
broker (a log line gives their count).
"""

import asyncio
import contextlib
import logging
from asyncio import FIRST_COMPLETED
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from taskiq import AckableMessage, AsyncBroker

from taskiq_batching._compat import share_stop_budget
from taskiq_batching.core.batcher import Batcher
from taskiq_batching.core.buffer import Envelope
from taskiq_batching.errors import describe
from taskiq_batching.transports.base import Delivery, Transport
from taskiq_batching.worker.decode import decode
from taskiq_batching.worker.lifecycle import Lifecycle
from taskiq_batching.worker.options import WorkerOptions
from taskiq_batching.worker.parking import Admission, Parking

logger = logging.getLogger("taskiq_batching")

#: Most deliveries taken per read of a transport whose unread deliveries
#: would be lost (a Redis list); the read size grows to it while reads
#: hold only batched messages, and drops to 1 after one that did not.
MAX_UNACKED_CHUNK = 100


Handed = bytes | AckableMessage
Parked = tuple[Envelope, Delivery]


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
        self.broker = broker
        self.batcher = batcher
        self.lifecycle = lifecycle
        self.transport = transport
        self.options = options
        self.handoff: deque[Delivery] = deque()
        self.parked = Parking(transport.acknowledges)
        self._reading: asyncio.Future[list[Delivery]] | None = None
        self.taken = 0
        self.read_size = 1 if not transport.acknowledges else MAX_UNACKED_CHUNK
        # A transport that knows when the broker took deliveries back (AMQP).
        batcher.lost = getattr(transport, "lost", None)
        self._next_reclaim = 0.0
        self._stopped = False

    async def deliveries(self) -> AsyncGenerator[Handed, None]:
        """The listener handed to taskiq's Receiver (see the module's docstring).

        :yield: deliveries of tasks the worker does not batch.
        """
        try:
            while True:
                if self.handoff:
                    yield self.transport.for_receiver(self.handoff.popleft())
                    continue
                if self.parked and await self._step_parked():
                    continue
                if self._reading is None:
                    limit = self._limit()
                    if limit == 0:
                        return
                    self._relieve()
                    self._reading = asyncio.ensure_future(self._read(limit))
                reading = self._reading
                # Parked messages must not wait for the next read: room for
                # them ends the wait too (the read goes on meanwhile).
                room: asyncio.Future[Any] = asyncio.ensure_future(
                    self.batcher.changed()
                )
                if not self.parked:
                    room.cancel()
                waits: set[asyncio.Future[Any]] = {reading, room}
                try:
                    await asyncio.wait(waits, return_when=FIRST_COMPLETED)
                except asyncio.CancelledError:
                    self._reading = None
                    chunk = await self.transport.interrupt(reading)
                    await self._settle_chunk(*self._sort(chunk))
                    late = self._late()
                    if late is None:
                        raise
                    yield late
                    return
                finally:
                    room.cancel()
                if not reading.done():
                    continue
                self._reading = None
                try:
                    chunk = reading.result()
                except StopAsyncIteration:
                    return
                taken, extra = self._sort(chunk)
                if not extra and not (taken and self.lifecycle.waits(taken)):
                    # Accepting runs straight through: no stop can cut it short.
                    await self.lifecycle.accept(taken)
                    continue
                routing = asyncio.ensure_future(self._settle_chunk(taken, extra))
                try:
                    await asyncio.wait({routing})
                except asyncio.CancelledError:
                    # What this read took is routed before the pump stops.
                    await _settle(routing)
                    late = self._late()
                    if late is None:
                        raise
                    yield late
                    return
                routing.result()
        finally:
            await self.stop()

    def _limit(self) -> int:
        limit = self.read_size
        if self.options.max_tasks is not None:
            limit = min(limit, self.options.max_tasks - self.taken)
        return max(limit, 0)

    def _relieve(self) -> None:
        """Flush everything when the broker sends nothing more until acks come."""
        prefetch = self.transport.prefetch
        if prefetch is not None and self.transport.outstanding >= prefetch:
            self.batcher.rules.relieve_all()

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

    def _sort(self, chunk: list[Delivery]) -> tuple[list[Parked], list[Delivery]]:
        """Take a chunk's batched messages; hand the rest to the Receiver.

        :return: the messages taken (admitted), and the deliveries to give
            back to the broker at once (see ``_keep_one_handed``).
        """
        taken: list[Parked] = []
        handed_before = len(self.handoff)
        admission = Admission(self.batcher)
        for delivery in chunk:
            envelope = decode(self.broker, delivery.data)
            if envelope is None or envelope.task_name not in self.batcher.specs:
                self.handoff.append(delivery)
                continue
            name = envelope.task_name
            envelope.size = len(delivery.data)
            # Behind its task's parked messages, if any: in order.
            if name not in self.parked and admission.take(name, envelope.size):
                taken.append((envelope, delivery))
            else:
                self.parked.park(name, delivery)
        self.taken += len(chunk)
        extra: list[Delivery] = []
        if not self.transport.acknowledges:
            extra = self._keep_one_handed(handed_before, len(chunk))
        return taken, extra

    async def _settle_chunk(self, taken: list[Parked], extra: list[Delivery]) -> None:
        await self._release(extra, "read ahead of the Receiver")
        if taken:
            await self.lifecycle.accept(taken)

    def _keep_one_handed(self, handed_before: int, read: int) -> list[Delivery]:
        """On a broker without acks, what to give back: the Receiver cannot take it.

        Such a broker forgets a message once delivered: keeping more than
        this pull's one would read ahead of the Receiver.
        """
        extra = list(self.handoff)[handed_before + 1 :]
        if len(self.handoff) > handed_before:
            self.read_size = 1
        elif read >= self.read_size:
            self.read_size = min(2 * self.read_size, MAX_UNACKED_CHUNK)
        for _ in extra:
            self.handoff.pop()
        self.taken -= len(extra)
        return extra

    async def _step_parked(self) -> bool:
        """Buffer the parked messages that fit now.

        :return: whether to look again before reading (some were taken,
            or parking is full and room came).
        """
        ready = self._unpark()
        if ready:
            await self.lifecycle.accept(ready)
            return True
        if not self.parked.full:
            return False
        self._relieve()
        await self.batcher.changed()
        return True

    def _unpark(self) -> list[Parked]:
        """Parked messages whose task has room now, in order within each task."""
        ready: list[Parked] = []
        for _, delivery in list(self.parked.unpark(Admission(self.batcher))):
            envelope = decode(self.broker, delivery.data)
            if envelope is None:  # decoded when read: it cannot fail now
                self.handoff.append(delivery)
                continue
            envelope.size = len(delivery.data)
            ready.append((envelope, delivery))
        return ready

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
        loop = asyncio.get_running_loop()
        budget = self.options.wait_tasks_timeout
        deadline = None if budget is None else loop.time() + budget
        unread = list(self.handoff)
        self.handoff.clear()
        if self._reading is not None:  # a listener error, with a read pending
            reading, self._reading = self._reading, None
            with contextlib.suppress(Exception):
                unread += await self.transport.interrupt(reading)
        await self._release(unread, "read but not started")
        await self._finish_parked(deadline)
        if self.batcher.buffered():
            logger.info(
                "taskiq_batching: flushing %d buffered message(s)",
                self.batcher.buffered(),
            )
        cut = await self.batcher.drain(deadline)
        if cut:
            logger.warning(
                "taskiq_batching: %d message(s) of batches still running after "
                "--wait-tasks-timeout=%s s were cut off and left to the broker",
                len(cut),
                budget,
            )
            await self._release(
                [
                    held.delivery
                    for held in cut
                    if held.delivery is not None
                    and not (held.ack is not None and held.ack.is_acked)
                ],
                "cut off",
            )
        if deadline is not None and self.options.receiver is not None:
            share_stop_budget(self.options.receiver, max(deadline - loop.time(), 0.0))
        await self.transport.close()

    async def _finish_parked(self, deadline: float | None) -> None:
        """Batch the parked messages as room frees (buffers now flush at once).

        They were taken from the broker: finished like the buffered ones,
        within the same deadline; what is still parked then goes back.
        """
        loop = asyncio.get_running_loop()
        self.batcher.rules.closing = True
        while self.parked:
            await self.lifecycle.accept(self._unpark())
            remaining = None if deadline is None else deadline - loop.time()
            if not self.parked or (remaining is not None and remaining <= 0):
                break
            await asyncio.wait(
                {asyncio.ensure_future(self.batcher.changed())}, timeout=remaining
            )
        await self._release(self.parked.clear(), "parked past the deadline")

    async def _release(self, deliveries: list[Delivery], what: str) -> None:
        if not deliveries:
            return
        try:
            await self.transport.release(deliveries)
        except Exception as exc:
            logger.error(
                "taskiq_batching: cannot give %d message(s) %s back to the broker: %s",
                len(deliveries),
                what,
                describe(exc),
            )


async def _settle(future: "asyncio.Future[None]") -> None:
    """Wait for a future to finish even if this task is cancelled meanwhile."""
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            continue
    future.result()
