"""The AMQP transport's consumers: named, tapped, listed, cancelled once.

Every consumer the transport starts, on the broker's queues (``start``:
every one but the delay queue, with the broker's declarations and
consumer arguments) and on the batched tasks' queues
(``amqp_batches.py``, through ``consume``), is named first and tapped
before it starts (``amqp_inbox.Inbox.tap``), so that every delivery is
taken off the frames. A consumer stays listed until its connection
closes (``forget``) or the worker stops (``cancel``, bounded for a dead
connection).
"""

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from taskiq_aio_pika import AioPikaBroker

from taskiq_batching._compat import amqp_declare_queues, amqp_delay_queue_name
from taskiq_batching.error_texts import describe
from taskiq_batching.transports.amqp_inbox import Inbox

logger = logging.getLogger("taskiq_batching")


class Consumers:
    """The consumers an AMQP transport started, and not forgotten.

    :param inbox: where their deliveries wait (it taps their channels).
    """

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox
        #: (queue, consumer tag) of each consumer started and not forgotten.
        self.listed: list[tuple[Any, str]] = []

    async def start(self, broker: AioPikaBroker, channel: Any) -> bool:
        """Consume the broker's queues on its read channel (not the delay queue).

        :param broker: the broker (its declarations and consumer arguments).
        :param channel: its read channel, its ``qos`` set.
        :return: False when a queue is consumed with ``no_ack`` (its
            deliveries are not acked).
        """
        acknowledges = True
        declared = await amqp_declare_queues(broker, channel)
        delay = amqp_delay_queue_name(broker)
        for queue, arguments in declared:
            if delay is not None and queue.name == delay:
                continue
            options = dict(arguments or {})
            tag = str(options.pop("consumer_tag", None) or f"tb.{uuid.uuid4().hex}")
            if options.get("no_ack"):
                # The server forgets these once delivered: nothing to ack.
                self._inbox.no_ack.add(tag)
                acknowledges = False
            await self.consume(channel, queue, tag, **options)
        return acknowledges

    async def consume(self, channel: Any, queue: Any, tag: str, **options: Any) -> None:
        """Start a consumer of ``queue`` on ``channel`` under ``tag``, tapped.

        :param channel: an aio-pika channel.
        :param queue: an aio-pika queue of that channel.
        :param tag: the consumer's tag.
        :param options: aio-pika's ``queue.consume`` arguments.
        """
        # Named first and tapped before it starts: every delivery is tapped.
        self._inbox.tap(await channel.get_underlay_channel(), tag)
        await queue.consume(self._inbox.on_message, consumer_tag=tag, **options)
        self.listed.append((queue, tag))

    def forget(self, tags: Sequence[str]) -> None:
        """Unlist these consumers: their connection closed, nothing to cancel.

        :param tags: their consumer tags (``amqp_task_consumers.py``).
        """
        self.listed = [(q, tag) for q, tag in self.listed if tag not in tags]

    async def cancel(self, timeout_seconds: float) -> None:
        """Cancel each listed consumer (once: the caller shields it).

        :param timeout_seconds: the longest one cancel waits (a dead
            connection); a failure is logged, the others go on.
        """
        for queue, tag in self.listed:
            try:
                await queue.cancel(tag, timeout=timeout_seconds)
            except Exception as exc:
                logger.warning(
                    "taskiq_batching: cannot cancel the consumer of %s: %s",
                    queue.name,
                    describe(exc),
                )
