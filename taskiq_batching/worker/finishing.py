"""The steps of a batched message's lifecycle after its batch ran, in taskiq's order.

``on_error`` middlewares (a failed message), ack if ``when_executed``,
``post_execute``, store the result (unless ``NoResultError``) and
``post_save``, ack if ``when_saved``; then the batch's room is released.
``Lifecycle`` (``lifecycle.py``) does the steps before the batch and hands
its batches here; the round trips (acks, results) are shared by a batch.
"""

import logging
from collections.abc import Sequence

from taskiq.abc.middleware import TaskiqMiddleware
from taskiq.acks import AcknowledgeType
from taskiq.exceptions import NoResultError

from taskiq_batching.core.bounds import Bounds
from taskiq_batching.core.buffer import Held
from taskiq_batching.core.call import Outcome
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.base import ResultWriter, Transport
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.worker.acks import ack_due
from taskiq_batching.worker.outcomes import finishing, run_hook, store

logger = logging.getLogger("taskiq_batching")


class Finishing:
    """Finishes the messages of a batch that ran (``Lifecycle.finish``).

    :param bounds: the batcher's bounds (a finished batch's room released).
    :param results: stores results.
    :param ack_type: the worker's ``--ack-type``.
    :param transport: acks deliveries (None: messages without acks).
    :param hooks: the middlewares overriding each hook, by its name.
    """

    def __init__(
        self,
        bounds: Bounds,
        results: ResultWriter,
        ack_type: AcknowledgeType,
        transport: Transport | None,
        hooks: dict[str, list[TaskiqMiddleware]],
    ) -> None:
        self.bounds = bounds
        self.results = results
        self.ack_type = ack_type
        self.transport = transport
        self.hooks = hooks
        self.needs_message = any(hooks.values())
        #: Whether a message's label chose its ack type: else every message
        #: is acked at the worker's step, and the other steps ack none.
        self.labelled = False
        #: Whether a sender ever waited for its messages (``InMemoryBroker``).
        self.senders_wait = False

    async def finish(
        self,
        spec: BatchSpec,
        batch: list[Held],
        outcomes: Sequence[Outcome],
        seconds: float,
    ) -> None:
        """Finish the messages of one batch in taskiq's order.

        Each message's ``execution_time`` is its share of the batch's run
        time (``seconds / len(batch)``), so that the times of a batch's
        messages add up to the batch's.

        :param spec: the batched task.
        :param batch: its messages.
        :param outcomes: each one's outcome, in the same order.
        :param seconds: how long the batch ran.
        """
        try:
            await self._finish(batch, outcomes, seconds / max(len(batch), 1))
        except Exception:
            logger.exception(
                "taskiq_batching: finishing a batch of %s failed", spec.task_name
            )
        finally:
            for held in batch if self.senders_wait else ():
                if held.waiter is not None and not held.waiter.done():
                    held.waiter.set_result(None)
            self.bounds.release(spec.task_name, len(batch))

    async def _finish(
        self, batch: list[Held], outcomes: Sequence[Outcome], share: float
    ) -> None:
        alive = finishing(batch, outcomes, share, per_message=self.needs_message)
        await self._each(alive, "on_error")
        await self._ack_done(alive, AcknowledgeType.WHEN_EXECUTED)
        await self._each(alive, "post_execute")
        stored = [
            one
            for one in alive
            if one.ok and not isinstance(one.result.error, NoResultError)
        ]
        await self._each(await store(self.results, stored), "post_save")
        await self._ack_done(alive, AcknowledgeType.WHEN_SAVED)
        if self.needs_message:  # one a hook failed on is unacked, as in taskiq
            self.forget([one.delivery for one in alive if not one.ok])

    async def _each(self, alive: list[Held], hook: str) -> None:
        """Run a hook of every middleware for each message (``run_hook``)."""
        await run_hook(self.hooks[hook], alive, hook)

    async def _ack_done(self, alive: list[Held], when: AcknowledgeType) -> None:
        if when is not self.ack_type and not self.labelled:
            return  # no message is due at this step: no pass over them
        if self.needs_message:  # a hook that failed leaves its message unacked
            alive = [one for one in alive if one.ok]
        await ack_due(self.transport, alive, when)

    def forget(self, deliveries: Sequence[Delivery | None]) -> None:
        """Left unacked (a middleware failed): the transport stops tracking them.

        :param deliveries: the messages' deliveries (None: one without).
        """
        if self.transport is not None:
            self.transport.forget([d for d in deliveries if d is not None])
