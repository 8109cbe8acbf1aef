"""The batcher: buffers per task, flush rules, the in-flight bound.

One ``Batcher`` per broker. Messages reach it two ways: ``submit`` from
taskiq's own per-message callback, which waits there for its batch's
outcome (``InMemoryBroker``); or ``enqueue`` from the worker's fast path,
whose messages are finished per batch by ``finisher`` (``direct.py``).
Flushing and running a batch (``runner.py``) are the same for both.
"""

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from taskiq import AsyncBroker, Context, TaskiqMessage

from taskiq_batching.buffer import Buffer, Envelope, PendingItem
from taskiq_batching.config import FlushReason
from taskiq_batching.errors import BatchItemError
from taskiq_batching.results import Outcome
from taskiq_batching.runner import BatchRun, BatchSpec
from taskiq_batching.signature import ArgumentError

logger = logging.getLogger("taskiq_batching")

_BufferKey = tuple[str, str]
#: ``finisher(task_name, [(message, outcome)], batch_seconds)``
Finisher = Callable[[str, list[tuple[PendingItem, Outcome]], float], Awaitable[None]]


class Batcher:
    """Holds the buffers of every batched task of one broker.

    :param broker: the broker whose batched tasks this serves.
    """

    def __init__(self, broker: AsyncBroker) -> None:
        self.broker = broker
        self.specs: dict[str, BatchSpec] = {}
        #: Runs sync batch functions; set from the worker's Receiver.
        self.executor: Executor | None = getattr(broker, "executor", None)
        #: Validate items against the list's element type (``--no-parse`` off).
        self.validate = True
        #: Unacked messages the broker delivers at most (its prefetch), if known.
        self.prefetch_limit: int | None = None
        #: Finishes, in bulk, the messages of a batch that no callback waits
        #: for (results, middlewares, acks); set by the worker integration.
        self.finisher: Finisher | None = None
        self._buffers: dict[_BufferKey, Buffer] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._in_flight: defaultdict[str, int] = defaultdict(int)
        self._changed: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        # Flush on the next loop turn instead of waiting for size or timer:
        # while shutting down, and when the sender awaits each result.
        self._closing = False
        self._linger_scheduled = False
        self._arrived = asyncio.Event()

    @property
    def _inplace(self) -> bool:
        return bool(getattr(self.broker, "await_inplace", False))

    def register(self, spec: BatchSpec) -> None:
        """Start batching a task.

        :param spec: the task's batch settings.
        """
        self.specs[spec.task_name] = spec

    async def submit(
        self,
        task_name: str,
        context: Context,
        args: Sequence[Any],
        kwargs: dict[str, Any],
    ) -> Any:
        """Buffer one message and wait for the outcome of its batch.

        :param task_name: the batched task.
        :param context: the message's taskiq context.
        :param args: the message's positional arguments, the item first.
        :param kwargs: the message's keyword arguments.
        :raises BatchItemError: when this message's arguments are invalid.
        :return: the batch function's return value.
        """
        outcome = asyncio.get_running_loop().create_future()
        self.enqueue(
            task_name,
            context.message,
            args,
            kwargs,
            context=context,
            outcome=outcome,
        )
        result: Outcome = await outcome
        if result.error is not None:
            # Every message of a failed batch raises the same error object:
            # reset its traceback so it does not grow with each raise.
            raise result.error.with_traceback(result.error.__traceback__)
        return result.value

    def enqueue(
        self,
        task_name: str,
        message: TaskiqMessage | Envelope,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        context: Context | None = None,
        outcome: "asyncio.Future[Outcome] | None" = None,
        ack: Callable[[], Awaitable[None] | None] | None = None,
    ) -> None:
        """Buffer one message; flush its buffer if that fills it.

        :param task_name: the batched task.
        :param message: the taskiq message (or its envelope).
        :param args: the message's positional arguments, the item first.
        :param kwargs: the message's keyword arguments.
        :param context: the message's taskiq context, if one exists already.
        :param outcome: resolved with the message's outcome, or None when
            the batcher's ``finisher`` finishes the message.
        :param ack: the message's ack, for the ``finisher``.
        :raises BatchItemError: when this message's arguments are invalid.
        """
        spec = self.specs[task_name]
        try:
            item, extra_args, extra_kwargs = self._prepare(spec, message, args, kwargs)
        except BatchItemError as exc:
            logger.warning("taskiq_batching: %s", exc)
            raise
        loop = asyncio.get_running_loop()
        key = (task_name, _group_key(extra_args, extra_kwargs))
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = Buffer(task_name, extra_args, extra_kwargs, loop.time())
            self._buffers[key] = buffer
            timeout = spec.config.batch_timeout
            if timeout is not None:
                buffer.timer = loop.call_later(
                    timeout,
                    self._flush_key,
                    key,
                    FlushReason.TIMEOUT,
                )
        buffer.items.append(PendingItem(item, message, context, outcome, ack))
        if len(buffer.items) >= spec.config.batch_size:
            self._flush_key(key, FlushReason.SIZE)
        elif self._closing or self._inplace:
            self._schedule_linger(loop)
        else:
            # The broker may send no more until something is acked.
            self._relieve(task_name)
        self._changed[task_name].set()
        self._arrived.set()

    def _prepare(
        self,
        spec: BatchSpec,
        message: TaskiqMessage | Envelope,
        args: Sequence[Any],
        kwargs: dict[str, Any],
    ) -> tuple[Any, list[Any], dict[str, Any]]:
        task_id = message.task_id
        if not args:
            raise BatchItemError(
                spec.task_name,
                task_id,
                "no item: send one item per message, as `await task.kiq(item)`",
            )
        if not self.validate:
            return args[0], list(args[1:]), kwargs
        try:
            item = spec.signature.coerce_item(args[0])
            extra_args, extra_kwargs = spec.signature.coerce_extras(args[1:], kwargs)
        except ArgumentError as exc:
            raise BatchItemError(spec.task_name, task_id, str(exc)) from None
        return item, extra_args, extra_kwargs

    def _schedule_linger(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._linger_scheduled:
            self._linger_scheduled = True
            loop.call_soon(self._linger)

    def _linger(self) -> None:
        self._linger_scheduled = False
        self.flush_all(FlushReason.SHUTDOWN if self._closing else FlushReason.INPLACE)

    def flush_all(self, reason: FlushReason, task_name: str | None = None) -> int:
        """Turn every buffer (of one task, or of all) into a running batch.

        :param reason: recorded as the batches' flush reason.
        :param task_name: only this task's buffers, when given.
        :return: number of batches started.
        """
        keys = [key for key in self._buffers if task_name in (None, key[0])]
        for key in keys:
            self._flush_key(key, reason)
        return len(keys)

    def _flush_key(self, key: _BufferKey, reason: FlushReason) -> None:
        buffer = self._buffers.pop(key, None)
        if buffer is None:
            return
        buffer.close()
        task = asyncio.get_running_loop().create_task(self._run(buffer, reason))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, buffer: Buffer, reason: FlushReason) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        run = BatchRun(
            broker=self.broker,
            executor=self.executor,
            spec=self.specs[buffer.task_name],
            buffer=buffer,
            reason=reason,
            waited=started - buffer.opened_at,
        )
        logger.debug(
            "Running batch of %d for %s (%s)",
            len(buffer.items),
            buffer.task_name,
            reason.value,
        )
        try:
            outcomes = await run.outcomes()
        except BaseException as exc:
            # Cancelled or interrupted: its messages fail, the batch stops.
            await self._resolve(buffer, [Outcome(error=exc)] * len(buffer.items), 0.0)
            raise
        await self._resolve(buffer, outcomes, loop.time() - started)

    async def _resolve(
        self,
        buffer: Buffer,
        outcomes: list[Outcome],
        seconds: float,
    ) -> None:
        finished: list[tuple[PendingItem, Outcome]] = []
        for pending, outcome in zip(buffer.items, outcomes, strict=True):
            if pending.outcome is None:
                finished.append((pending, outcome))
            elif not pending.outcome.done():
                pending.outcome.set_result(outcome)
        if finished and self.finisher is not None:
            await self.finisher(buffer.task_name, finished, seconds)

    async def admit(self, task_name: str) -> None:
        """Wait until the worker may take one more message of a task.

        A worker holds at most ``2 * batch_size`` messages of a task
        (one batch running, one filling), and never more than the broker's
        prefetch, when known: the broker sends no more until some are
        acked. At that limit it waits for messages to finish; only when
        every held message sits in a buffer, so that nothing else could
        ever free room (buffers of
        different extra arguments, a size-only task), are those buffers
        flushed. Waiting therefore always ends.

        :param task_name: a batched task.
        """
        changed = self._changed[task_name]
        while self._in_flight[task_name] >= self._limit(task_name):
            changed.clear()
            self._relieve(task_name)
            await changed.wait()
        self._in_flight[task_name] += 1

    def _limit(self, task_name: str) -> int:
        limit = self.specs[task_name].config.max_in_flight
        if self.prefetch_limit is not None:
            limit = min(limit, self.prefetch_limit)
        return limit

    def _relieve(self, task_name: str) -> None:
        """Flush a task's buffers if they hold all it may hold: nothing else would."""
        held = self._in_flight[task_name]
        if held >= self._limit(task_name) and self.buffered(task_name) >= held:
            self.flush_all(FlushReason.PRESSURE, task_name)

    def buffered(self, task_name: str | None = None) -> int:
        """Messages waiting in buffers (of one task, or of all).

        :param task_name: count only this task's messages, when given.
        :return: the number of buffered messages.
        """
        return sum(
            len(buffer.items)
            for (name, _), buffer in self._buffers.items()
            if task_name in (None, name)
        )

    async def wait_buffered(self, count: int, task_name: str | None = None) -> None:
        """Wait until at least ``count`` messages wait in buffers.

        :param count: the number of messages.
        :param task_name: count only this task's messages, when given.
        """
        while self.buffered(task_name) < count:
            self._arrived.clear()
            await self._arrived.wait()

    def release(self, task_name: str, count: int = 1) -> None:
        """Count admitted messages of a task as finished.

        :param task_name: a batched task.
        :param count: how many.
        """
        self._in_flight[task_name] -= count
        self._changed[task_name].set()

    def close(self) -> None:
        """Flush every buffer now, and from now on flush on the next loop turn.

        Messages that still arrive no longer wait for size or timer.
        """
        self._closing = True
        self.flush_all(FlushReason.SHUTDOWN)

    async def drain(self) -> None:
        """Close (see ``close``) and wait for every batch to finish."""
        self.close()
        while self._buffers or self._running:
            self.flush_all(FlushReason.SHUTDOWN)
            if self._running:
                await asyncio.wait(set(self._running))

    def reopen(self) -> None:
        """Leave shutdown mode (after ``drain``), for a broker started again."""
        self._closing = False


def _group_key(args: list[Any], kwargs: dict[str, Any]) -> str:
    """Messages share a batch only when their extra arguments are equal."""
    if not args and not kwargs:
        return ""
    try:
        return json.dumps([args, kwargs], sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr((args, sorted(kwargs.items(), key=lambda kv: kv[0])))


def batcher_of(broker: AsyncBroker) -> Batcher | None:
    """The batcher that ``BatchingMiddleware`` attached to a broker, if any.

    :param broker: any taskiq broker.
    :return: its batcher, or None without ``BatchingMiddleware``.
    """
    for middleware in broker.middlewares:
        batcher = getattr(middleware, "batcher", None)
        if isinstance(batcher, Batcher):
            return batcher
    return None
