"""Calling a batch function: dependencies, the call, its timeout, per-item outcomes.

With ``batch_isolate=True`` a batch that raises is bisected: each half
is run again, down to single items, so only the failing items fail. For
``k`` failing items among ``n`` this costs at most ``2·k·log2(n)`` extra
calls (only halves that fail are split again).
"""

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from taskiq import AsyncBroker, Context, TaskiqState

from taskiq_batching.core.buffer import Buffer, Held
from taskiq_batching.errors import BatchResultError, BatchTimeoutError
from taskiq_batching.info import BatchInfo
from taskiq_batching.results import PerItem
from taskiq_batching.settings import FlushReason

# BatchSpec re-exported while modules of other branches import it from here.
from taskiq_batching.spec import BatchSpec as BatchSpec

logger = logging.getLogger("taskiq_batching")


#: The result label of a message whose item ``batch_where`` filtered out.
FILTERED_LABEL = "batch_filtered"


@dataclass(slots=True)
class Outcome:
    """What one message gets from its batch: a value, or an error.

    :param value: its result's value.
    :param error: its error.
    :param filtered: it did not run: ``batch_where`` was false for its item
        (its result is ``None``, labelled ``batch_filtered``).
    """

    value: Any = None
    error: BaseException | None = None
    filtered: bool = False


class BatchSpanLike(Protocol):
    """What the batcher tells a batch's span (see ``tracing.py``)."""

    def outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """The batch's outcomes, before the span ends."""


#: ``span(task_name, buffer, reason, waited)``: a batch's span, if traced.
SpanMaker = Callable[
    [str, Buffer, FlushReason, float], AbstractContextManager[BatchSpanLike]
]


@dataclass(slots=True)
class RunOptions:
    """How the worker runs functions (taskiq's Receiver settings).

    :param executor: runs sync batch functions (None: the loop's default).
    :param propagate_exceptions: pass a batch's error to its dependencies'
        teardown, as taskiq does for a task's.
    """

    executor: Executor | None = None
    propagate_exceptions: bool = True


async def run_batch(
    broker: AsyncBroker,
    spec: BatchSpec,
    buffer: Buffer,
    reason: FlushReason,
    options: RunOptions,
) -> list[Outcome]:
    """Run a flushed buffer; one outcome per message, in item order.

    :param broker: the broker (dependencies, state).
    :param spec: the task's batch spec.
    :param buffer: the flushed buffer.
    :param reason: why it was flushed.
    :param options: the worker's run settings.
    :return: the outcomes.
    """
    waited = asyncio.get_running_loop().time() - buffer.opened_at
    run = _Run(broker, spec, buffer, reason, waited, options)
    return await run.outcomes(buffer.items, isolating=False)


@dataclass(slots=True)
class _Run:
    broker: AsyncBroker
    spec: BatchSpec
    buffer: Buffer
    reason: FlushReason
    waited: float
    options: RunOptions

    async def outcomes(self, held: list[Held], isolating: bool) -> list[Outcome]:
        try:
            returned = await self._call(held, isolating)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and _cancelled_from_outside():
                raise
            logger.error(
                "taskiq_batching: batch of %d of %s failed",
                len(held),
                self.spec.task_name,
                exc_info=exc,
            )
            if not self.spec.settings.isolate or len(held) == 1:
                return [Outcome(error=exc)] * len(held)
            middle = len(held) // 2
            first = await self.outcomes(held[:middle], isolating=True)
            return first + await self.outcomes(held[middle:], isolating=True)
        return split(self.spec.task_name, returned, len(held))

    async def _call(self, held: Sequence[Held], isolating: bool) -> Any:
        self.buffer.calls += 1
        signature = self.spec.signature
        resolver = None
        if signature.dependencies is not None:
            contexts = [message.context_for(self.broker) for message in held]
            info = BatchInfo(
                task_name=self.spec.task_name,
                flush_reason=self.reason,
                waited=self.waited,
                contexts=contexts,
                isolating=isolating,
            )
            initial = {
                **self.broker.custom_dependency_context,
                Context: contexts[0],
                TaskiqState: self.broker.state,
                BatchInfo: info,
            }
            resolver = signature.dependencies.async_ctx(
                initial,
                self.broker.dependency_overrides or None,
            )
        error: BaseException | None = None
        try:
            kwargs = {} if resolver is None else await resolver.resolve_kwargs()
            kwargs.update(self.buffer.kwargs)
            items = [message.item for message in held]
            if self.spec.timeout is None:
                return await self._start(items, kwargs)
            try:
                return await asyncio.wait_for(
                    self._start(items, kwargs), self.spec.timeout
                )
            except asyncio.TimeoutError:
                raise BatchTimeoutError(
                    self.spec.task_name, len(items), self.spec.timeout
                ) from None
        except BaseException as exc:
            error = exc
            raise
        finally:
            if resolver is not None:
                if error is not None and self.options.propagate_exceptions:
                    await resolver.close(type(error), error, error.__traceback__)
                else:
                    await resolver.close(None, None, None)

    async def _start(self, items: list[Any], kwargs: dict[str, Any]) -> Any:
        signature = self.spec.signature
        args = self.buffer.args
        if signature.is_coroutine:
            return await signature.func(items, *args, **kwargs)
        loop = asyncio.get_running_loop()
        call = functools.partial(signature.func, items, *args, **kwargs)
        executor = self.options.executor
        if isinstance(executor, ProcessPoolExecutor):
            # A process pool cannot pickle a contextvars.Context.
            return await loop.run_in_executor(executor, call)
        return await loop.run_in_executor(
            executor, contextvars.copy_context().run, call
        )


def split(task_name: str, returned: Any, size: int) -> list[Outcome]:
    """Turn what a batch function returned into one outcome per item.

    :param task_name: used in the error message.
    :param returned: the function's return value.
    :param size: the number of items it was called with.
    :return: the outcomes, in item order.
    """
    if not isinstance(returned, PerItem):
        shared = Outcome(value=returned)
        return [shared] * size
    if len(returned.values) != size:
        error = BatchResultError(
            task_name,
            f"per_item returned {len(returned.values)} result(s) for {size} item(s)",
        )
        return [Outcome(error=error)] * size
    return [
        Outcome(error=value) if isinstance(value, BaseException) else Outcome(value)
        for value in returned.values
    ]


def _cancelled_from_outside() -> bool:
    """Whether the running task itself is being cancelled (a worker cut-off).

    A ``CancelledError`` the batch function raises on its own is one of
    its outcomes, as in taskiq. Python 3.10 cannot tell them apart.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or bool(cancelling())
