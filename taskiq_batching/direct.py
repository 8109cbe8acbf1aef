"""The worker's fast path: messages of batched tasks handled per batch.

A message fetched by the worker (see ``worker.py``) is decoded once, goes
through ``pre_execute`` middlewares and into its buffer without a taskiq
callback of its own. When its batch is done, the whole batch is finished
together, in the order taskiq's Receiver uses for one message: ``on_error``
middlewares, acks for ``when_executed``, ``post_execute``, results stored
(pipelined where the backend allows), ``post_save``, acks for
``when_saved`` (one XACK per stream on Redis). Each message still gets its
own result, its own middleware calls and its own ack.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from taskiq import AsyncBroker, TaskiqMessage, TaskiqResult
from taskiq.abc.middleware import TaskiqMiddleware
from taskiq.acks import AcknowledgeType, parse_acknowledge_type
from taskiq.exceptions import NoResultError
from taskiq.utils import maybe_awaitable

from taskiq_batching.buffer import Envelope, PendingItem
from taskiq_batching.bulk import Ack, ack_many, store_many
from taskiq_batching.engine import Batcher
from taskiq_batching.errors import BatchItemError
from taskiq_batching.results import Outcome

logger = logging.getLogger("taskiq_batching")

#: A finished message: its result, its ack (if still due) and ack type.
_Done = tuple[TaskiqMessage | Envelope, TaskiqResult[Any], Ack | None, AcknowledgeType]


def implementing(broker: AsyncBroker, hook: str) -> list[TaskiqMiddleware]:
    """The broker's middlewares that implement ``hook`` (ours excepted), in order.

    :param broker: the broker.
    :param hook: a ``TaskiqMiddleware`` method name.
    :return: those middlewares.
    """
    from taskiq_batching.middleware import BatchingMiddleware

    return [
        middleware
        for middleware in broker.middlewares
        if getattr(type(middleware), hook) is not getattr(TaskiqMiddleware, hook)
        and not isinstance(middleware, BatchingMiddleware)
    ]


@dataclass
class DirectPath:
    """Takes messages of batched tasks straight from the broker to buffers.

    :param broker: the worker's broker.
    :param batcher: its batcher.
    :param ack_type: the worker's ``--ack-type``.
    """

    broker: AsyncBroker
    batcher: Batcher
    ack_type: AcknowledgeType
    hooks: dict[str, list[TaskiqMiddleware]] = field(init=False)

    def __post_init__(self) -> None:
        self.hooks = {
            hook: implementing(self.broker, hook)
            for hook in ("pre_execute", "on_error", "post_execute", "post_save")
        }
        self.batcher.finisher = self.finish

    async def accept(self, envelope: Envelope, ack: Ack | None) -> None:
        """Buffer one decoded message of a batched task (admitted already).

        :param envelope: the decoded message, labels parsed.
        :param ack: acknowledges it, when the broker can.
        """
        pre_execute = self.hooks["pre_execute"]
        if pre_execute:
            message = envelope.open()
            for middleware in pre_execute:
                message = await maybe_awaitable(middleware.pre_execute(message))
            envelope = Envelope.of(message)
        received = AcknowledgeType.WHEN_RECEIVED
        if ack is not None and self._ack_type(envelope) is received:
            await maybe_awaitable(ack())
            ack = None
        try:
            self.batcher.enqueue(
                envelope.task_name,
                envelope,
                envelope.args,
                envelope.kwargs,
                ack=ack,
            )
        except BatchItemError as exc:
            await self.finish(
                envelope.task_name,
                [(PendingItem(None, envelope, ack=ack), Outcome(error=exc))],
                0.0,
            )

    def _ack_type(self, message: TaskiqMessage | Envelope) -> AcknowledgeType:
        label = message.labels.get("ack_type")
        if label is None:
            return self.ack_type
        try:
            return parse_acknowledge_type(label)
        except ValueError:
            logger.warning(
                "taskiq_batching: invalid ack_type %r on %s; using %s",
                label,
                message.task_id,
                self.ack_type.value,
            )
            return self.ack_type

    async def finish(
        self,
        task_name: str,
        finished: list[tuple[PendingItem, Outcome]],
        seconds: float,
    ) -> None:
        """Store results, run middlewares and ack the messages of one batch.

        :param task_name: the batched task.
        :param finished: each message with its outcome.
        :param seconds: how long the batch ran (each result's execution_time).
        """
        try:
            await self._finish(finished, round(seconds, 2))
        except Exception:
            logger.exception(
                "taskiq_batching: finishing a batch of %s failed", task_name
            )
        finally:
            self.batcher.release(task_name, len(finished))

    async def _finish(
        self,
        finished: list[tuple[PendingItem, Outcome]],
        seconds: float,
    ) -> None:
        on_error = self.hooks["on_error"]
        # Middlewares get a message and a result object each; without them
        # messages with equal outcomes and labels share one result, which
        # is then serialized once (see ``bulk.store_many``).
        detailed = bool(self.hooks["post_execute"] or self.hooks["post_save"])
        done: list[_Done] = []
        shared: tuple[Outcome, dict[str, Any], TaskiqResult[Any]] | None = None
        for pending, outcome in finished:
            message: TaskiqMessage | Envelope = pending.message
            if detailed or (on_error and outcome.error is not None):
                message = pending.taskiq_message()
                result = _result(outcome, message.labels, seconds)
                if outcome.error is not None:
                    for middleware in reversed(on_error):
                        await maybe_awaitable(
                            middleware.on_error(message, result, outcome.error)
                        )
            else:
                if (
                    shared is None
                    or shared[0] is not outcome
                    or shared[1] != message.labels
                ):
                    labels = message.labels
                    shared = (outcome, labels, _result(outcome, labels, seconds))
                result = shared[2]
            done.append((message, result, pending.ack, self._ack_type(message)))
        await self._ack(done, AcknowledgeType.WHEN_EXECUTED)
        await self._each(
            "post_execute", done, lambda m, msg, res: m.post_execute(msg, res)
        )
        stored = [
            entry for entry in done if not isinstance(entry[1].error, NoResultError)
        ]
        failed = set(
            await store_many(
                self.broker.result_backend,
                [(message.task_id, result) for message, result, _, _ in stored],
            ),
        )
        saved = [entry for entry in stored if entry[0].task_id not in failed]
        await self._each("post_save", saved, lambda m, msg, res: m.post_save(msg, res))
        # A message whose result could not be stored stays unacked, so that
        # it is delivered again rather than leave its task_id without result.
        await self._ack(
            [entry for entry in done if entry[0].task_id not in failed],
            AcknowledgeType.WHEN_SAVED,
        )

    async def _each(
        self,
        hook: str,
        done: list[_Done],
        call: Callable[[TaskiqMiddleware, TaskiqMessage, TaskiqResult[Any]], Any],
    ) -> None:
        middlewares = self.hooks[hook]
        if not middlewares:
            return
        for message, result, _, _ in done:
            # _finish builds each message's model when these middlewares exist.
            assert isinstance(message, TaskiqMessage)
            for middleware in reversed(middlewares):
                await maybe_awaitable(call(middleware, message, result))

    async def _ack(
        self,
        done: list[_Done],
        when: AcknowledgeType,
    ) -> None:
        acks = [
            ack for _, _, ack, ack_type in done if ack is not None and ack_type is when
        ]
        if acks:
            await ack_many(self.broker, acks)


def _result(
    outcome: Outcome, labels: dict[str, Any], seconds: float
) -> TaskiqResult[Any]:
    """The result taskiq would store for a message with this outcome."""
    return TaskiqResult(
        is_err=outcome.error is not None,
        log=None,
        return_value=outcome.value,
        execution_time=seconds,
        error=outcome.error,
        labels=labels,
    )
