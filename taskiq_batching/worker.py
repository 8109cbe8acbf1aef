"""Worker integration: the only module that relies on how taskiq's worker runs.

Two things cannot be done through taskiq's public hooks:

* **Capacity.** taskiq's Receiver gives each message an execution slot
  (``--max-async-tasks``) until its callback returns. A message waiting
  for its batch would hold a slot all that time, so batches could never
  outgrow the slots, and size-only batching would deadlock. The broker's
  ``listen()`` is therefore wrapped: messages of batched tasks are taken
  out of the stream before the Receiver's slots and handed to
  ``Receiver.callback`` directly (as ``InMemoryBroker.kick`` does), under
  the batcher's own bound (``2 * batch_size`` per task). Everything else
  passes through untouched. The Receiver is found as the caller of
  ``listen()``, to reuse its settings (executor, ``--no-parse``).
* **Shutdown.** The CLI's signal handler sets an asyncio event from a
  signal handler without waking the event loop, so a worker idling in a
  blocking read may not notice SIGTERM. The handler is chained so it
  also wakes the loop.

Tested against the supported taskiq versions (see ``pyproject.toml``).
"""

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncGenerator, Callable
from types import FrameType
from typing import Any

from taskiq import AckableMessage, AsyncBroker
from taskiq.receiver import Receiver

from taskiq_batching.engine import Batcher

logger = logging.getLogger("taskiq_batching")

Delivery = bytes | AckableMessage

#: Seconds to wait for the broker's own listener to stop on shutdown.
STOP_LISTENER_TIMEOUT = 2.0


def install_listen_hook(broker: AsyncBroker, batcher: Batcher) -> None:
    """Route the broker's deliveries of batched tasks to the batcher.

    :param broker: the broker.
    :param batcher: its batcher.
    """
    original = broker.listen

    def listen() -> AsyncGenerator[Delivery, None]:
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
        return _Router(broker, batcher, receiver, original()).run()

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
        inner: AsyncGenerator[Delivery, None],
    ) -> None:
        self.broker = broker
        self.batcher = batcher
        self.receiver = receiver
        self.inner = inner
        # One slot: ordinary messages are fetched at the Receiver's pace.
        self.plain: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=1)
        self.callbacks: set[asyncio.Task[None]] = set()

    async def run(self) -> AsyncGenerator[Delivery, None]:
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

    def _task_name(self, delivery: Delivery) -> str | None:
        data = delivery.data if isinstance(delivery, AckableMessage) else delivery
        try:
            return self.broker.formatter.loads(data).task_name
        except Exception:
            return None

    async def _pump(self) -> None:
        async for delivery in self.inner:
            name = self._task_name(delivery)
            if name is None or name not in self.batcher.specs:
                await self.plain.put(delivery)
                continue
            await self.batcher.admit(name)
            task = asyncio.create_task(self.receiver.callback(delivery))
            self.callbacks.add(task)
            task.add_done_callback(self._callback_done(name))

    def _callback_done(self, name: str) -> Callable[["asyncio.Task[None]"], None]:
        def done(task: "asyncio.Task[None]") -> None:
            self.callbacks.discard(task)
            self.batcher.release(name)
            if not task.cancelled() and task.exception() is not None:
                logger.error(
                    "taskiq_batching: callback of %s failed",
                    name,
                    exc_info=task.exception(),
                )

        return done

    async def _close(self, pump: "asyncio.Task[None]") -> None:
        """Stop fetching, flush every buffer, finish every admitted message."""
        pump.cancel()
        await _settle(pump, STOP_LISTENER_TIMEOUT)
        await _settle(asyncio.ensure_future(self.inner.aclose()), STOP_LISTENER_TIMEOUT)
        # Ordinary messages already fetched: run them rather than drop them.
        while not self.plain.empty():
            delivery = self.plain.get_nowait()
            task = asyncio.create_task(self.receiver.callback(delivery))
            self.callbacks.add(task)
            task.add_done_callback(self.callbacks.discard)
        logger.info(
            "taskiq_batching: flushing buffers, %d message(s) in flight",
            len(self.callbacks),
        )
        await self.batcher.drain()
        while self.callbacks:
            await asyncio.wait(set(self.callbacks))
            await self.batcher.drain()


async def _settle(task: "asyncio.Future[Any]", timeout: float) -> None:
    """Wait a bounded time for a task to end, whatever its outcome."""
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        logger.warning(
            "taskiq_batching: the broker's listener did not stop within %g s",
            timeout,
        )
        return
    if not task.cancelled() and task.exception() is not None:
        logger.warning(
            "taskiq_batching: the broker's listener failed while stopping: %r",
            task.exception(),
        )


def install_signal_wakeup() -> None:
    """Make SIGTERM/SIGINT/SIGHUP also wake the event loop.

    Chains whatever handler is installed (the ``taskiq worker`` one), so
    its shutdown event is seen at once, not after the next blocking read.
    Does nothing outside the main thread.
    """
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if signum is None:
            continue
        previous = signal.getsignal(signum)
        if not callable(previous) or getattr(previous, "_taskiq_batching", False):
            continue
        try:
            signal.signal(signum, _chained(previous, loop))
        except ValueError:  # not the main thread
            return


def _chained(
    previous: Callable[[int, FrameType | None], Any],
    loop: asyncio.AbstractEventLoop,
) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        try:
            previous(signum, frame)
        finally:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake)

    handler._taskiq_batching = True  # type: ignore[attr-defined]
    return handler


def _wake() -> None:
    """Nothing to do: being scheduled is what wakes the loop."""
