"""What the worker knows about particular brokers: prefetch limits, acks."""

import logging

from taskiq import AsyncBroker

from taskiq_batching.engine import Batcher

logger = logging.getLogger("taskiq_batching")

#: Brokers known to deliver messages without acks.
UNACKED_BROKERS = frozenset(
    {
        "ListQueueBroker",
        "ListQueueClusterBroker",
        "ListQueueSentinelBroker",
        "PubSubBroker",
        "PubSubSentinelBroker",
    },
)


def broker_prefetch(broker: AsyncBroker) -> int | None:
    """How many unacked messages the broker delivers at most, if known.

    taskiq-aio-pika's ``qos`` (AMQP prefetch count) is the one known today.

    :param broker: the broker.
    :return: the prefetch limit, or None when unknown or unlimited.
    """
    qos = getattr(broker, "_qos", None)
    if isinstance(qos, int) and not isinstance(qos, bool) and qos > 0:
        return qos
    return None


def warn_about_prefetch(batcher: Batcher) -> None:
    """Warn, with the numbers, for each task whose batch_size the prefetch caps.

    :param batcher: the worker's batcher, its ``prefetch_limit`` set.
    """
    prefetch = batcher.prefetch_limit
    if prefetch is None:
        return
    for spec in batcher.specs.values():
        size = spec.config.batch_size
        if size > prefetch:
            logger.warning(
                "taskiq_batching: task %s has batch_size=%d but the broker "
                "delivers at most %d unacked messages (prefetch/qos=%d): its "
                "batches will hold at most %d messages. Set the broker's "
                "prefetch to at least %d (2 x batch_size).",
                spec.task_name,
                size,
                prefetch,
                prefetch,
                prefetch,
                2 * size,
            )


def warn_no_acks(broker: AsyncBroker) -> None:
    """Say once that a crash of this worker loses what it holds.

    :param broker: a broker that delivers messages without acks.
    """
    logger.warning(
        "taskiq_batching: %s does not acknowledge messages: whatever a worker "
        "holds (buffered or running batches) is lost if it crashes; a graceful "
        "shutdown (SIGTERM/SIGINT) still flushes and finishes it.",
        type(broker).__name__,
    )
