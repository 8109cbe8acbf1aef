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
* a batched message over its task's bound is handed to the Receiver too
  (as an ``Overflow``), and waits for room in one of its slots, as any
  message would, so a busy task never blocks the others.

``--max-tasks-per-child`` counts every message taken. When the Receiver
stops, a read in progress is finished or interrupted by the transport's
rules (nothing taken is dropped); deliveries read but not handed over go
back to the broker; buffers flush; batches get ``--wait-tasks-timeout``
to finish, after which they are cut off and their messages left to the
broker (a log line gives their count).
"""

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from taskiq import AckableMessage, AsyncBroker

from taskiq_batching._compat import share_stop_budget
from taskiq_batching.core.batcher import Batcher
from taskiq_batching.core.buffer import Envelope
from taskiq_batching.errors import describe
from taskiq_batching.transports.base import Delivery, Transport
from taskiq_batching.worker.decode import decode
from taskiq_batching.worker.lifecycle import Lifecycle
from taskiq_batching.worker.options import WorkerOptions

logger = logging.getLogger("taskiq_batching")

#: Most deliveries taken per read of a transport whose unread deliveries
#: would be lost (a Redis list); the read size grows to it while reads
#: hold only batched messages, and drops to 1 after one that did not.
MAX_UNACKED_CHUNK = 100


@dataclass(slots=True)
class Overflow:
    """A batched message over its task's bound, waiting in a Receiver slot.

    :param envelope: the decoded message.
    :param delivery: its delivery.
    """

    envelope: Envelope
    delivery: Delivery


Handed = bytes | AckableMessage | Overflow


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
        self.handoff: deque[Delivery | Overflow] = deque()
        self.taken = 0
        self.read_size = 1 if not transport.acknowledges else MAX_UNACKED_CHUNK
        self._next_reclaim = 0.0
        self._stopped = False

    async def deliveries(self) -> AsyncGenerator[Handed, None]:
        """The listener handed to taskiq's Receiver (see the module's docstring).

        :yield: deliveries of tasks the worker does not batch, and overflows.
        """
        try:
            while True:
                if self.handoff:
                    yield self._hand(self.handoff.popleft())
                    continue
                limit = self._limit()
                if limit == 0:
                    return
                self._relieve()
                reading = asyncio.ensure_future(self._read(limit))
                try:
                    await asyncio.wait({reading})
                except asyncio.CancelledError:
                    chunk = await self.transport.interrupt(reading)
                    await self._settle_chunk(*self._sort(chunk))
                    late = self._late()
                    if late is None:
                        raise
                    yield late
                    return
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
                    return claimed
        return await self.transport.read(limit)

    def _sort(
        self, chunk: list[Delivery]
    ) -> tuple[list[tuple[Envelope, Delivery]], list[Delivery]]:
        """Take a chunk's batched messages; hand the rest to the Receiver.

        :return: the messages taken (admitted), and the deliveries to give
            back to the broker at once (see ``_keep_one_handed``).
        """
        taken: list[tuple[Envelope, Delivery]] = []
        handed_before = len(self.handoff)
        for delivery in chunk:
            envelope = decode(self.broker, delivery.data)
            if envelope is None or envelope.task_name not in self.batcher.specs:
                self.handoff.append(delivery)
            elif self.batcher.try_admit(envelope.task_name):
                taken.append((envelope, delivery))
            else:
                self.handoff.append(Overflow(envelope, delivery))
        self.taken += len(chunk)
        extra: list[Delivery] = []
        if not self.transport.acknowledges:
            extra = self._keep_one_handed(handed_before, len(chunk))
        return taken, extra

    async def _settle_chunk(
        self, taken: list[tuple[Envelope, Delivery]], extra: list[Delivery]
    ) -> None:
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
        return [_delivery_of(item) for item in extra]

    def _hand(self, item: Delivery | Overflow) -> Handed:
        if isinstance(item, Overflow):
            return item
        return self.transport.for_receiver(item)

    def _late(self) -> Handed | None:
        """The delivery of the pull the Receiver interrupted to stop, if any."""
        if not self.handoff:
            return None
        return self._hand(self.handoff.popleft())

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
        unread = [_delivery_of(item) for item in self.handoff]
        self.handoff.clear()
        await self._release(unread, "read but not started")
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

    async def take_overflow(self, overflow: Overflow) -> None:
        """Wait in the Receiver's slot for room, then accept (an ``Overflow``).

        :param overflow: the message.
        """
        await self.batcher.admit(overflow.envelope.task_name)
        await self.lifecycle.accept([(overflow.envelope, overflow.delivery)])


def _delivery_of(item: Delivery | Overflow) -> Delivery:
    return item.delivery if isinstance(item, Overflow) else item


async def _settle(future: "asyncio.Future[None]") -> None:
    """Wait for a future to finish even if this task is cancelled meanwhile."""
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            continue
    future.result()
