"""Worker integration: the module that relies on how taskiq's worker runs.

taskiq's Receiver gives each message an execution slot
(``--max-async-tasks``) until its callback returns. A message waiting for
its batch would hold a slot all that time, so batches could never outgrow
the slots, and size-only batching would deadlock. The broker's
``listen()`` is therefore wrapped (an attribute of the broker instance):
the broker is read in chunks (``fetch.py``), each message decoded once
(``decode.py``); messages of batched tasks are taken out of the stream
before the Receiver's slots and handed to the fast path (``direct.py``)
under the batcher's own bound (``2 * batch_size`` per task); everything
else passes through to the Receiver untouched. The Receiver is found as
the caller of ``listen()`` (a frame lookup), to reuse its settings:
``ack_time`` (``--ack-type``), ``executor``, ``validate_params``
(``--no-parse``) and ``callback`` (for ordinary messages the Receiver no
longer takes while stopping). A broker's own listener can swallow a
cancellation (taskiq-redis's stream listener, in its reclaim step), so
stopping it repeats the cancel.

The other private touch point is ``signals.py``. Both are tested against
the supported taskiq versions (``pyproject.toml``) by the unit tests that
drive taskiq's own Receiver and the integration tests that run
``taskiq worker``.
"""

import asyncio
import logging
import sys
from collections.abc import AsyncGenerator
from types import FrameType
from typing import Any

from taskiq import AckableMessage, AsyncBroker
from taskiq.receiver import Receiver

from taskiq_batching.brokers import (
    UNACKED_BROKERS,
    broker_prefetch,
    warn_about_prefetch,
    warn_no_acks,
)
from taskiq_batching.decode import decode
from taskiq_batching.direct import DirectPath
from taskiq_batching.engine import Batcher
from taskiq_batching.fetch import Chunks, Delivery, Fetched, listener_for
from taskiq_batching.reclaim import StreamReclaimer, reclaimer_for

logger = logging.getLogger("taskiq_batching")

#: Seconds to wait for the broker's own listener to stop on shutdown.
STOP_LISTENER_TIMEOUT = 2.0
#: Seconds before starting a failed broker listener again (doubling up to MAX).
RESTART_DELAY_MIN = 0.1
RESTART_DELAY_MAX = 5.0
#: Seconds between repeated cancellations of the broker's listener.
CANCEL_RETRY_INTERVAL = 0.1


def install_listen_hook(broker: AsyncBroker, batcher: Batcher) -> None:
    """Route the broker's deliveries of batched tasks to the batcher.

    :param broker: the broker.
    :param batcher: its batcher.
    """
    original = broker.listen

    def listen() -> AsyncGenerator[bytes | AckableMessage, None]:
        receiver = _calling_receiver(sys._getframe(1))
        if receiver is None or not batcher.specs:
            if batcher.specs:
                logger.warning(
                    "taskiq_batching: %s.listen() was not called by a taskiq "
                    "Receiver; batched tasks run through the caller unchanged "
                    "and their batches are limited by its concurrency.",
                    type(broker).__name__,
                )
            return original()
        batcher.executor = receiver.executor
        batcher.validate = receiver.validate_params
        batcher.prefetch_limit = broker_prefetch(broker)
        warn_about_prefetch(batcher)
        reclaimer = reclaimer_for(broker)
        if reclaimer is not None:
            reclaimer.check(list(batcher.specs.values()))
        lossy = type(broker).__name__ in UNACKED_BROKERS
        if lossy:
            warn_no_acks(broker)
        direct = DirectPath(broker, batcher, receiver.ack_time)
        listen = listener_for(broker, original)
        router = _Router(broker, batcher, receiver, listen, direct, reclaimer)
        # Other brokers are judged by their first delivery.
        router.unacked_warned = lossy or reclaimer is not None
        return router.run()

    # An instance attribute shadows the method for this broker only.
    broker.listen = listen  # type: ignore[method-assign]


def _calling_receiver(frame: FrameType | None) -> Receiver | None:
    for _ in range(3):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Receiver):
            return candidate
        frame = frame.f_back
    return None


class _Router:
    """Splits one broker listener into batched and ordinary deliveries."""

    def __init__(
        self,
        broker: AsyncBroker,
        batcher: Batcher,
        receiver: Receiver,
        listen: Chunks,
        direct: DirectPath,
        reclaimer: StreamReclaimer | None = None,
    ) -> None:
        self.broker = broker
        self.direct = direct
        self.reclaimer = reclaimer
        self.unacked_warned = False
        self.batcher = batcher
        self.receiver = receiver
        self.listen = listen
        self.inner = listen()
        self.restart_delay = RESTART_DELAY_MIN
        # One slot: ordinary messages are fetched at the Receiver's pace.
        self.plain: asyncio.Queue[bytes | AckableMessage] = asyncio.Queue(maxsize=1)
        self.callbacks: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()

    async def run(self) -> AsyncGenerator[bytes | AckableMessage, None]:
        pump = asyncio.create_task(self._pump())
        try:
            while True:
                getter = asyncio.ensure_future(self.plain.get())
                try:
                    await asyncio.wait(
                        {getter, pump},
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    if not getter.done():
                        getter.cancel()
                if getter.done() and not getter.cancelled():
                    yield getter.result()
                    continue
                pump.result()  # the broker's listener ended: re-raise its error
                return
        finally:
            await self._close(pump)

    async def _pump(self) -> None:
        stop = asyncio.ensure_future(self.stopping.wait())
        reclaiming = None
        if self.reclaimer is not None:
            reclaiming = asyncio.create_task(self._reclaim(self.reclaimer, stop))
        try:
            while (chunk := await self._next(stop)) is not None:
                for delivery in chunk:
                    await self._route(delivery, stop)
        finally:
            stop.cancel()
            if reclaiming is not None:
                # A claimed message it held stays pending for this consumer:
                # _close() finds it among our own pending entries.
                reclaiming.cancel()
                await asyncio.wait({reclaiming})

    async def _reclaim(
        self,
        reclaimer: StreamReclaimer,
        stop: "asyncio.Future[Any]",
    ) -> None:
        """Claim idle entries of dead workers on a timer, until we stop."""
        while not stop.done():
            await asyncio.wait({stop}, timeout=reclaimer.interval)
            if stop.done():
                return
            try:
                claimed = await reclaimer.claim()
            except Exception as exc:
                logger.warning("taskiq_batching: reclaiming failed: %r", exc)
                continue
            for delivery in claimed:
                await self._route(delivery, stop)

    async def _next(self, stop: "asyncio.Future[Any]") -> list[Delivery] | None:
        """The listener's next chunk of deliveries; None once it ended or we stop.

        A listener that fails (a dropped connection, a restarted broker) is
        started again after a pause, so the worker keeps its buffers and
        goes on, rather than dying and leaving them to redelivery.
        """
        while True:
            fetch = asyncio.ensure_future(anext(self.inner))
            if not self.stopping.is_set():
                await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not fetch.done():
                # Stopping: one loop turn lets the listener hand over what it
                # already holds; a read that needs the network is left to the
                # broker (redelivery, or our own-pending pass on a stream).
                await asyncio.sleep(0)
            if not fetch.done():
                await _cancel(fetch, STOP_LISTENER_TIMEOUT)
                return None
            error = None if fetch.cancelled() else fetch.exception()
            if fetch.cancelled() or isinstance(error, StopAsyncIteration):
                return None
            if error is None:
                self.restart_delay = RESTART_DELAY_MIN
                return fetch.result()
            logger.error(
                "taskiq_batching: the broker's listener failed (%r); "
                "starting it again in %g s",
                error,
                self.restart_delay,
            )
            await asyncio.wait({stop}, timeout=self.restart_delay)
            if stop.done():
                return None
            self.restart_delay = min(2 * self.restart_delay, RESTART_DELAY_MAX)
            self.inner = self.listen()

    async def _route(self, delivery: Delivery, stop: "asyncio.Future[Any]") -> None:
        if isinstance(delivery, bytes):
            data, ack = delivery, None
            if not self.unacked_warned:
                self.unacked_warned = True
                warn_no_acks(self.broker)
        else:
            data, ack = delivery.data, delivery.ack
        envelope = decode(self.broker, data)
        if envelope is not None and envelope.task_name in self.batcher.specs:
            await self.batcher.admit(envelope.task_name)
            try:
                await self.direct.accept(envelope, ack)
            except Exception:
                # As when taskiq's callback fails before running a task: the
                # message stays unacked (redelivered on brokers with acks).
                logger.exception(
                    "taskiq_batching: cannot accept message %s of %s",
                    envelope.task_id,
                    envelope.task_name,
                )
                self.batcher.release(envelope.task_name)
            return
        # Anything else, undecodable messages included, is the Receiver's.
        plain = delivery.delivered() if isinstance(delivery, Fetched) else delivery
        if not self.stopping.is_set():
            put = asyncio.ensure_future(self.plain.put(plain))
            await asyncio.wait({put, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not put.done():
                put.cancel()
                await asyncio.wait({put})
            if not put.cancelled():
                return
        # The Receiver takes no more: run it here rather than drop it.
        self._dispatch(plain)

    def _dispatch(self, delivery: bytes | AckableMessage) -> None:
        # What the Receiver no longer takes (it is stopping): straight to its
        # per-message callback, outside its execution slots (as
        # InMemoryBroker.kick does).
        task = asyncio.create_task(self.receiver.callback(delivery))
        self.callbacks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: "asyncio.Task[None]") -> None:
        self.callbacks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "taskiq_batching: a message callback failed",
                exc_info=task.exception(),
            )

    async def _close(self, pump: "asyncio.Task[None]") -> None:
        """Stop fetching, flush every buffer, finish every message taken."""
        self.stopping.set()
        # From now on buffers flush at once, which also frees the pump if
        # it waits for room.
        self.batcher.close()
        await asyncio.wait({pump})
        closing = asyncio.ensure_future(self.inner.aclose())
        await asyncio.wait({closing}, timeout=STOP_LISTENER_TIMEOUT)
        if not closing.done():
            await _cancel(closing, STOP_LISTENER_TIMEOUT)
        while not self.plain.empty():
            self._dispatch(self.plain.get_nowait())
        logger.info(
            "taskiq_batching: flushing buffers, %d message(s) in flight",
            len(self.callbacks),
        )
        await self._finish()
        if self.reclaimer is not None:
            # Entries of a read cancelled mid-flight: delivered, never seen.
            try:
                leftovers = await self.reclaimer.own_pending()
            except Exception as exc:
                logger.warning("taskiq_batching: cannot read own pending: %r", exc)
                leftovers = []
            for delivery in leftovers:
                self._dispatch(delivery)
            await self._finish()

    async def _finish(self) -> None:
        """Flush every buffer and wait for every message taken to be done."""
        while self.callbacks:
            await self.batcher.drain()
            await asyncio.wait(set(self.callbacks))
        await self.batcher.drain()


async def _cancel(task: "asyncio.Future[Any]", timeout: float) -> None:
    """Cancel a task of the broker's listener and wait a bounded time for it.

    The cancellation is repeated: taskiq-redis's stream listener swallows
    one that lands in its reclaim step and goes on to a blocking read.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while not task.done():
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            logger.warning(
                "taskiq_batching: the broker's listener did not stop within %g s",
                timeout,
            )
            return
        task.cancel()
        await asyncio.wait({task}, timeout=min(CANCEL_RETRY_INTERVAL, remaining))
    if not task.cancelled() and task.exception() is not None:
        logger.warning(
            "taskiq_batching: the broker's listener failed while stopping: %r",
            task.exception(),
        )
