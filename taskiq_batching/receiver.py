"""``BatchingReceiver``: taskiq's Receiver that hands itself to the plugin.

``taskiq worker --receiver taskiq_batching:BatchingReceiver`` is taskiq's
public way to run a worker with a Receiver of one's own. This one behaves
exactly as taskiq's ``Receiver`` (it adds no option and overrides no
step of a message); it only tells the plugin, while it listens, which
Receiver is asking the broker for messages, so that the plugin reads the
worker's options (``--ack-type``, ``--max-tasks-per-child``...) from it.
Without it, the plugin finds the Receiver by looking at the frames that
called ``broker.listen()`` (``_compat.calling_receiver``), which relies on
how taskiq's Receiver is written.
"""

import asyncio
import logging

from taskiq.receiver import Receiver

from taskiq_batching.middleware import BatchingMiddleware
from taskiq_batching.worker.hook import listening_receiver

logger = logging.getLogger("taskiq_batching")


class BatchingReceiver(Receiver):
    """taskiq's Receiver, telling the plugin who listens.

    Use it as ``taskiq worker module:broker --receiver
    taskiq_batching:BatchingReceiver`` (every other option of
    ``taskiq worker`` works as with taskiq's own Receiver), or build it as
    taskiq's ``Receiver`` where a test runs a worker in process. The
    broker still needs a ``BatchingMiddleware``: the receiver only makes
    the plugin's hook into the worker public; it batches nothing by itself.
    """

    async def listen(self, finish_event: asyncio.Event) -> None:
        """Listen as taskiq's Receiver does, known to the plugin meanwhile.

        The Receiver asks ``broker.listen()`` for messages from tasks it
        starts while it listens; those tasks see this Receiver as the one
        listening (a context variable, not a look at the call stack).

        :param finish_event: set to stop listening (the worker's shutdown).
        """
        if not any(isinstance(m, BatchingMiddleware) for m in self.broker.middlewares):
            logger.warning(
                "taskiq_batching: BatchingReceiver on %s, which has no "
                "BatchingMiddleware: nothing is batched",
                type(self.broker).__name__,
            )
        with listening_receiver(self):
            await super().listen(finish_event)
