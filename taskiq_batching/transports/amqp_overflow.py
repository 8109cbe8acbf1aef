"""RabbitMQ: a batched task's queue holds a few batches, the rest the main queue.

Each batched task's queue has one active consumer, which assembles every
batch (fill as one worker, ``amqp_batches.py``). On a saturated backlog
that caps the drain at what that worker (and the one it hands the role
to) can do: the main queue, which every worker reads, drained faster.
So the task's queue is declared bounded (``amqp_queues.backlog_arguments``:
``x-max-length`` of ``BACKLOG_BATCHES`` batches, ``x-overflow:
reject-publish``): RabbitMQ (3.10.8, measured) answers a publish with
``basic.nack`` once that many messages are ready (unacked ones do not
count), and a refused publish is not stored. The rest of the backlog then
waits on the main queue, where every worker batches what it reads
(``worker/taking.py``'s fallback):

* **Producer** (``publish_or_kick``, ``AmqpBatches.send``): a message its
  task's queue refused goes through the broker's own ``kick`` (the main
  queue): sent once, never twice, never lost. It carries the
  ``batch_overflow`` header (``overflowed``), so the worker that reads it
  batches it there instead of forwarding it back to the full queue
  (forwarding it would cost a publish and a confirm for nothing:
  measured, the drain at 0.63-0.69x of the default path's without the
  mark). After a refusal the
  task's next messages go straight to ``kick`` for ``FULL_SECONDS``, then
  one tries the queue again while the others still go to ``kick``, until
  it is stored: a refused publish costs more than a ``kick`` (measured,
  10,000 messages 1,000 at once: 670 msg/s each refused first, ~2,000
  msg/s each kicked or each stored in the task's queue).
* **Forwarder** (``amqp_forward.py``): a refused forward's original goes
  back to the main queue and forwarding pauses, as for any failure; it is
  logged at INFO, being expected at saturation.
* **Declaring** (``TaskQueues.declare``): RabbitMQ refuses to declare an
  existing queue with other arguments (406 PRECONDITION_FAILED, which
  closes the channel): one an earlier version declared (unbounded) or
  declared with another ``batch_size``. The queue is then declared
  passively on a new channel and used as it is, with one warning: its
  backlog is not shared until it is deleted (when empty) and declared
  again. The producer and the forwarder publish on the broker's
  ``write_channel``, so they declare on a channel of its connection
  opened for that and closed after (``declare_aside``): a 406 never
  closes the channel they publish on.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika import DeliveryMode, Message
from aiormq.exceptions import ChannelPreconditionFailed, DeliveryError
from pamqp.commands import Basic
from taskiq import BrokerMessage

from taskiq_batching.error_texts import describe
from taskiq_batching.transports.amqp_headers import OVERFLOW_LABEL
from taskiq_batching.transports.amqp_queues import (
    SINGLE_ACTIVE_CONSUMER,
    backlog_arguments,
)

logger = logging.getLogger("taskiq_batching")

#: Seconds a task's messages go straight to the main queue after its queue
#: refused one (it was full), before one tries it again.
FULL_SECONDS = 0.1

#: Opens a channel (a connection's ``channel``).
OpenChannel = Callable[[], Awaitable[Any]]


def refused(answer: object) -> bool:
    """Whether a publish's answer is RabbitMQ's ``basic.nack`` (queue full).

    :param answer: a confirmation (a frame) or the error it failed with.
    :return: True for a ``Basic.Nack``, bare or in aiormq's ``DeliveryError``.
    """
    if isinstance(answer, DeliveryError):
        answer = answer.frame
    return isinstance(answer, Basic.Nack)


class TaskQueues:
    """Declares the batched tasks' queues; remembers which one was just full.

    :param durable: as the broker's first task queue.
    :param arguments: that queue's arguments (type, dead-lettering,
        priorities: ``amqp_queue_settings``).
    """

    def __init__(self, durable: bool, arguments: dict[str, Any]) -> None:
        self._durable = durable
        self._arguments = arguments
        #: Queues declared otherwise already, warned about once.
        self.warned: set[str] = set()
        #: Each queue's name -> ``clock`` time until which it counts as full.
        self._full_until: dict[str, float] = {}
        #: Queues a publish is trying again (the others go to ``kick``).
        self._probing: set[str] = set()
        #: Declarations on a channel of their own under way, by queue.
        self._aside: dict[str, asyncio.Future[None]] = {}
        #: Seconds, for ``FULL_SECONDS``.
        self.clock: Callable[[], float] = time.monotonic

    def arguments(self, batch_size: int) -> dict[str, Any]:
        """A task's queue's arguments: the broker's, single active, bounded.

        :param batch_size: the task's.
        :return: the declaration's table.
        """
        return {
            **self._arguments,
            SINGLE_ACTIVE_CONSUMER: True,
            **backlog_arguments(batch_size),
        }

    async def declare(
        self, open_channel: OpenChannel, name: str, batch_size: int
    ) -> tuple[Any, Any]:
        """Declare a task's queue on a new channel, or take it as it is.

        :param open_channel: opens the channel to declare (and consume) on.
        :param name: the queue.
        :param batch_size: the task's (its bound).
        :return: the channel (a second one if the first was closed by a
            406) and the queue.
        """
        channel = await open_channel()
        try:
            arguments = self.arguments(batch_size)
            queue = await channel.declare_queue(
                name, durable=self._durable, arguments=arguments
            )
        except ChannelPreconditionFailed as exc:
            # A robust channel closed by the server reopens itself: closed here.
            await _close(channel)
            self._warn(name, exc)
            channel = await open_channel()
            queue = await channel.declare_queue(name, passive=True)
        return channel, queue

    async def declare_aside(self, connection: Any, name: str, batch_size: int) -> None:
        """Declare a task's queue on a channel of ``connection`` closed after.

        :param connection: the broker's write connection (None: not started).
        :param name: the queue.
        :param batch_size: the task's.
        :raises RuntimeError: the broker is not started.
        """
        if connection is None:
            raise RuntimeError("Please run startup before kicking.")
        # One declaration for the sends that need it at once (a thousand
        # concurrent kiqs: each a channel and a quorum queue's declare cut
        # a preload's rate in half).
        declaring = self._aside.get(name)
        if declaring is None:
            declaring = asyncio.ensure_future(
                self._declare_aside(connection, name, batch_size)
            )
            self._aside[name] = declaring
            declaring.add_done_callback(lambda _: self._aside.pop(name, None))
        await asyncio.shield(declaring)

    async def _declare_aside(self, connection: Any, name: str, batch_size: int) -> None:
        channel, _ = await self.declare(connection.channel, name, batch_size)
        await _close(channel)

    def _warn(self, name: str, exc: BaseException) -> None:
        if name in self.warned:
            return
        self.warned.add(name)
        logger.warning(
            "taskiq_batching: the batched task's queue %r exists with other "
            "arguments (declared by an earlier version or with another "
            "batch_size: %s); it is used as it is, and its backlog is not "
            "shared with the main queue until it is deleted (when empty) and "
            "declared again",
            name,
            describe(exc),
        )

    async def publish_or_kick(
        self,
        channel: Any,
        name: str,
        message: BrokerMessage,
        priority_label: str,
        kick: Callable[[BrokerMessage], Awaitable[None]],
    ) -> None:
        """Publish to a task's queue; if it is full, send the plain way.

        :param channel: the broker's write channel (publisher confirms).
        :param name: the task's queue.
        :param message: the taskiq message.
        :param priority_label: the broker's priority label's name.
        :param kick: the broker's ``kick``: a refused message goes through
            it marked (``overflowed``), the worker batches it where it
            reads it.
        :raises Exception: the publish failed otherwise, or the kick failed.
        """
        if not getattr(channel, "publisher_confirms", True):
            # RabbitMQ would drop a refused publish unseen: as a plain
            # producer's (a worker forwards it).
            await kick(message)
            return
        until = self._full_until.get(name)
        if until is not None and (self.clock() < until or name in self._probing):
            await kick(overflowed(message))
            return
        probe = until is not None  # one tries the queue again, the rest kick
        if probe:
            self._probing.add(name)
        try:
            # Built only to publish: a kick builds its own.
            built = as_kicked(message, priority_label)
            await channel.default_exchange.publish(built, routing_key=name)
        except DeliveryError as exc:
            if not refused(exc):
                raise
            self._full_until[name] = self.clock() + FULL_SECONDS
            await kick(overflowed(message))  # not stored: sent once
            return
        finally:
            if probe:
                self._probing.discard(name)
        if probe:
            self._full_until.pop(name, None)


def overflowed(message: BrokerMessage) -> BrokerMessage:
    """A message its task's full queue refused, marked for the main queue.

    The mark is a label only ``kick`` sees (an AMQP header): the body,
    and so the labels the task runs with, stay as they were.

    :param message: the taskiq message.
    :return: a copy with the ``OVERFLOW_LABEL`` label.
    """
    return BrokerMessage(
        task_id=message.task_id,
        task_name=message.task_name,
        message=message.message,
        labels={**message.labels, OVERFLOW_LABEL: "1"},
    )


def as_kicked(message: BrokerMessage, priority_label: str) -> Message:
    """The AMQP message ``AioPikaBroker.kick`` builds.

    :param message: the taskiq message.
    :param priority_label: the broker's priority label's name.
    :return: persistent, with its headers and priority as ``kick`` sets them.
    """
    priority = message.labels.get(priority_label)
    try:
        level = None if priority is None else int(priority)
    except (TypeError, ValueError):
        level = None
    return Message(
        body=message.message,
        headers={
            "task_id": message.task_id,
            "task_name": message.task_name,
            **message.labels,
        },
        delivery_mode=DeliveryMode.PERSISTENT,
        priority=level,
    )


async def _close(channel: Any) -> None:
    try:
        await channel.close()
    except Exception as exc:  # closed by the server already: nothing left
        logger.debug("taskiq_batching: closing a closed channel: %r", exc)
