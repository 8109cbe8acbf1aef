"""The kicker of a batched task: one item per ``kiq``, no task settings on the wire."""

import time
from typing import Any

from taskiq.kicker import AsyncKicker

from taskiq_batching.core.signature import BatchSignature
from taskiq_batching.labels import wire_labels
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports import SENT_AT_LABEL, stamps_sent_at
from taskiq_batching.waiting import kiq_waiting, waiting_sender


class BatchKicker(AsyncKicker[Any, Any]):
    """taskiq's kicker, refusing a list of items where one item is expected.

    Made by ``BatchingDecoratedTask.kicker()``, so ``task.kiq(...)``,
    ``task.kicker().with_labels(...).kiq(...)``, ``BatchedTask.kiq`` and
    ``kiq_many`` all check their item before anything is sent, and send
    no task settings (``wire_labels``). On a broker that keeps no send
    time (AMQP), each message carries its own (``SENT_AT_LABEL``).

    With ``BatchingMiddleware(wait_in_broker=True)`` on a broker where
    batched messages wait (a taskiq-redis stream broker), ``kiq`` sends to
    the task's own queue (``waiting.py``).

    :param kicker: the kicker taskiq made for the task.
    :param signature: the batch function's signature.
    :param spec: the task's spec (None: always sent the plain way).
    """

    def __init__(
        self,
        kicker: AsyncKicker[Any, Any],
        signature: BatchSignature,
        spec: BatchSpec | None = None,
    ) -> None:
        super().__init__(
            task_name=kicker.task_name,
            broker=kicker.broker,
            labels=wire_labels(kicker.labels),
            return_type=kicker.return_type,
        )
        self.signature = signature
        self.spec = spec

    def with_labels(self, **labels: Any) -> "BatchKicker":
        """Add labels of this message (see taskiq's ``AsyncKicker.with_labels``).

        ``batch`` and the ``batch_*`` task settings are left out: a worker
        reads them from its registered task, never from a message.

        :param labels: labels of the message (``batch_deadline``, ...).
        :return: this kicker.
        """
        self.labels.update(wire_labels(labels))
        return self

    async def kiq(self, *args: Any, **kwargs: Any) -> Any:
        """Send one item (see taskiq's ``AsyncKicker.kiq``).

        :param args: the item, then the batch function's further arguments.
        :param kwargs: its further keyword arguments.
        :raises ListSentAsItemError: when the item is a list of items.
        :return: the taskiq task of this message.
        """
        if args:
            self.signature.check_one_item(self.task_name, args[0])
        if stamps_sent_at(self.broker):
            # Its batch_timeout counts from here, whichever worker takes it.
            self.labels[SENT_AT_LABEL] = time.time()
        source = waiting_sender(self.broker, self.spec)
        if source is not None and self.spec is not None:
            return await kiq_waiting(self, source, self.spec, args, kwargs)
        return await super().kiq(*args, **kwargs)
