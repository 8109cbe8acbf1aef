"""Running one flushed buffer: dependencies, the call, per-item outcomes.

With ``batch_isolate=True`` a batch that raises is bisected: each half is
run again, down to single items, so only the failing items fail. For
``k`` failing items among ``n`` this costs at most ``2·k·log2(n)`` extra
calls (only halves that fail are split again).
"""

import asyncio
import contextvars
import functools
import logging
from collections.abc import Awaitable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from taskiq import AsyncBroker, Context, TaskiqState

from taskiq_batching.buffer import BatchInfo, Buffer
from taskiq_batching.config import BatchConfig, FlushReason
from taskiq_batching.errors import BatchTimeoutError
from taskiq_batching.results import Outcome, split
from taskiq_batching.signature import BatchSignature

logger = logging.getLogger("taskiq_batching")


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """Everything the worker needs to batch one task.

    :param task_name: the task's name.
    :param config: flush settings.
    :param signature: the batch function and how to call it.
    :param timeout: the task's ``timeout`` label, in seconds: limits each
        call of the batch function, not each message's wait.
    """

    task_name: str
    config: BatchConfig
    signature: BatchSignature
    timeout: float | None


@dataclass(slots=True)
class BatchRun:
    """One flushed buffer being run.

    :param broker: the broker (dependencies, state).
    :param executor: runs sync batch functions (None: the loop's default).
    :param spec: the task's batch spec.
    :param buffer: the flushed buffer.
    :param reason: why it was flushed.
    :param waited: seconds between its first item and the flush.
    """

    broker: AsyncBroker
    executor: Executor | None
    spec: BatchSpec
    buffer: Buffer
    reason: FlushReason
    waited: float

    async def outcomes(self) -> list[Outcome]:
        """Run the batch; one outcome per item, in item order."""
        return await self._outcomes(list(range(len(self.buffer.items))), False)

    async def _outcomes(self, indices: list[int], isolating: bool) -> list[Outcome]:
        try:
            returned = await self._call(indices, isolating)
        except Exception as exc:
            logger.warning(
                "taskiq_batching: batch of %d for %s failed: %r",
                len(indices),
                self.spec.task_name,
                exc,
            )
            if not self.spec.config.isolate or len(indices) == 1:
                return [Outcome(error=exc)] * len(indices)
            middle = len(indices) // 2
            first = await self._outcomes(indices[:middle], True)
            return first + await self._outcomes(indices[middle:], True)
        return split(self.spec.task_name, returned, len(indices))

    async def _call(self, indices: Sequence[int], isolating: bool) -> Any:
        pending = [self.buffer.items[index] for index in indices]
        signature = self.spec.signature
        resolver = None
        if signature.dependencies is not None:
            contexts = [item.context_for(self.broker) for item in pending]
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
            items = [item.item for item in pending]
            call = self._start(items, kwargs)
            if self.spec.timeout is None:
                return await call
            try:
                return await asyncio.wait_for(call, self.spec.timeout)
            except asyncio.TimeoutError:
                timeout = self.spec.timeout
                raise BatchTimeoutError(
                    self.spec.task_name, len(items), timeout
                ) from None
        except BaseException as exc:
            error = exc
            raise
        finally:
            if resolver is not None:
                exc_info = (type(error), error, error.__traceback__) if error else None
                await resolver.close(*(exc_info or (None, None, None)))

    def _start(self, items: list[Any], kwargs: dict[str, Any]) -> "asyncio.Future[Any]":
        signature = self.spec.signature
        args = self.buffer.args
        if signature.is_coroutine:
            coroutine: Awaitable[Any] = signature.func(items, *args, **kwargs)
            return asyncio.ensure_future(coroutine)
        loop = asyncio.get_running_loop()
        call = functools.partial(signature.func, items, *args, **kwargs)
        if isinstance(self.executor, ProcessPoolExecutor):
            # A process pool cannot pickle a contextvars.Context.
            return loop.run_in_executor(self.executor, call)
        return loop.run_in_executor(
            self.executor,
            contextvars.copy_context().run,
            call,
        )
