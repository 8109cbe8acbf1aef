"""The results of a finished batch's messages: built, stored, and the hooks' calls.

Used by ``finishing.py`` when it finishes a batch: each message gets the
``TaskiqResult`` taskiq would store for it; results are written together;
middleware hooks run in each message's own context variables.
"""

import asyncio
import contextvars
import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from taskiq import TaskiqResult
from taskiq.abc.middleware import TaskiqMiddleware

from taskiq_batching.core.buffer import Held
from taskiq_batching.core.call import FILTERED_LABEL, Outcome
from taskiq_batching.core.policies import ItemFiltered
from taskiq_batching.error_texts import describe
from taskiq_batching.errors import BatchItemError, BatchResultError
from taskiq_batching.labels import TASK_LABELS, wire_labels
from taskiq_batching.transports.base import ResultWriter

logger = logging.getLogger("taskiq_batching")


def refused(task_name: str, one: Held, exc: Exception) -> Outcome:
    """The outcome of a message ``Batcher.add`` refused; logged here.

    ``Batcher.add`` raises only ``BatchItemError`` and ``ItemFiltered``
    for what a message carries; anything else is a fault of the worker's
    own: still, only this message fails, and the log has the traceback.

    :param task_name: its batched task.
    :param one: the message.
    :param exc: what ``Batcher.add`` raised.
    :return: its outcome (it is finished alone).
    """
    if isinstance(exc, BatchItemError):
        logger.warning("taskiq_batching: %s", exc)
        return Outcome(error=exc)
    if isinstance(exc, ItemFiltered):
        return Outcome(filtered=True)
    logger.error(
        "taskiq_batching: buffering message %s of %s failed",
        one.task_id,
        task_name,
        exc_info=exc,
    )
    error = BatchItemError(
        task_name, one.task_id, f"the worker could not buffer it: {type(exc).__name__}"
    )
    return Outcome(error=error)


def _describe(error: BaseException | None) -> str:
    return "unknown error" if error is None else describe(error)


def result_of(
    outcome: Outcome, labels: dict[str, Any], share: float
) -> TaskiqResult[Any]:
    """The result taskiq would store for a message with this outcome.

    As taskiq, with the message's labels; but not the task's settings,
    which a message sent by an earlier version still carries.
    """
    if not TASK_LABELS.isdisjoint(labels):
        labels = wire_labels(labels)
    if outcome.filtered:
        labels = {**labels, FILTERED_LABEL: True}
    return TaskiqResult(
        is_err=outcome.error is not None,
        log=None,
        return_value=outcome.value,
        execution_time=share,
        error=outcome.error,
        labels=labels,
    )


def finishing(
    batch: list[Held], outcomes: Sequence[Outcome], share: float, per_message: bool
) -> list[Held]:
    """Each message of a finished batch with the result taskiq would store.

    :param batch: the messages.
    :param outcomes: each one's outcome, in the same order.
    :param share: each message's ``execution_time``, in seconds.
    :param per_message: give each message a result object of its own
        (middlewares see them); else equal outcomes and labels share one,
        which a result writer then encodes once.
    :return: the messages being finished (``Held.outcome``, ``result`` set).
    """
    done: list[Held] = []
    shared: tuple[Outcome, dict[str, Any], TaskiqResult[Any]] | None = None
    for held, outcome in zip(batch, outcomes, strict=True):
        labels = held.message.labels
        if per_message:
            held.taskiq_message()
            result = result_of(outcome, labels, share)
        else:
            if shared is None or shared[0] is not outcome or shared[1] != labels:
                shared = (outcome, labels, result_of(outcome, labels, share))
            result = shared[2]
        held.outcome, held.result, held.ok, held.error = outcome, result, True, None
        done.append(held)
    return done


async def store(writer: ResultWriter, stored: list[Held]) -> list[Held]:
    """Write results; retry failures once; store an error for what still fails.

    As in taskiq, a message whose result cannot be stored is still acked
    (it ran): its task_id gets ``BatchResultError`` instead when the
    backend takes that, and a log line either way.

    :param writer: the result backend's writer.
    :param stored: the messages whose results are due.
    :return: those whose result was stored (``post_save`` is theirs).
    """
    failed = await _write(writer, stored)
    if not failed:  # the usual batch: no pass over it again
        return stored
    failed = await _write(writer, failed)
    for one in failed:
        one.result = result_of(
            Outcome(
                error=BatchResultError(
                    one.message.task_name,
                    f"the result backend could not store the result of "
                    f"{one.task_id}: {_describe(one.error)}",
                ),
            ),
            one.message.labels,
            one.result.execution_time,
        )
    for one in await _write(writer, failed):
        logger.error(
            "taskiq_batching: cannot store the result of %s: %s",
            one.task_id,
            _describe(one.error),
        )
    return [one for one in stored if one not in failed]


async def _write(writer: ResultWriter, entries: list[Held]) -> list[Held]:
    if not entries:
        return []
    errors = await writer.write(
        [(one.message.task_id, one.result) for one in entries],
    )
    for index, error in errors:
        entries[index].error = error
    return [entries[index] for index, _ in errors]


async def _in_scope(scope: contextvars.Context | None, value: Any) -> Any:
    """Await what a hook returned; a coroutine runs in the message's context."""
    if scope is not None and inspect.iscoroutine(value) and sys.version_info >= (3, 11):
        loop = asyncio.get_running_loop()
        return await loop.create_task(value, context=scope)
    return await value


async def call_hook(
    scope: contextvars.Context | None, hook: Callable[..., Any], *args: Any
) -> Any:
    """Call a middleware hook in a message's context, as taskiq would await it."""
    value = hook(*args) if scope is None else scope.run(hook, *args)
    if inspect.isawaitable(value):
        return await _in_scope(scope, value)
    return value


async def run_hook(
    middlewares: Sequence[TaskiqMiddleware], alive: list[Held], hook: str
) -> None:
    """Run a hook of every middleware (last added first) for each message.

    A message whose middleware raises stops there, as its taskiq callback
    would: no later hook, result or ack (its batch-mates go on).

    :param middlewares: the middlewares that override ``hook``.
    :param alive: the batch's messages being finished.
    :param hook: ``on_error``, ``post_execute`` or ``post_save``.
    """
    if not middlewares:
        return
    for one in alive:
        error = one.outcome.error
        if not one.ok or (hook == "on_error" and error is None):
            continue
        message = one.taskiq_message()
        extra = (error,) if hook == "on_error" else ()
        try:
            for middleware in reversed(middlewares):
                method = getattr(middleware, hook)
                await call_hook(one.scope, method, message, one.result, *extra)
        except Exception:
            one.ok = False
            logger.exception(
                "taskiq_batching: %s failed for message %s; it is left unfinished",
                hook,
                one.task_id,
            )
