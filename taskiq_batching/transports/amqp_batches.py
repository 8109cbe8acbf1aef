"""RabbitMQ: each batched task waits in a queue of its own, one consumer at a time.

With ``BatchingMiddleware(wait_in_broker=True)`` on a taskiq-aio-pika
broker, each batched task gets a queue, ``<queue>.batch.<task name>``
(``amqp_queues.py``), declared like the broker's first task queue
(durable, type, dead-lettering, priorities) plus
``x-single-active-consumer``: however many worker processes consume it,
RabbitMQ delivers to one, the active consumer, which therefore sees the
task's whole rate and buffers it as one worker would (fill as with one
worker). Its ``batch_timeout`` counts from each message's send time (the
``batch_sent_at`` header), so waiting in the queue counts too.

* **Sending** (``send``, the producer's ``kiq`` and ``kiq_many`` through
  ``waiting.py``): each message is published to the task's queue through
  the default exchange on the broker's ``write_channel`` (publisher
  confirms, as the broker's ``kick``), with the headers and persistence
  ``kick`` gives it; a message with a ``delay`` label goes through
  ``kick`` (the delay queue dead-letters it to the main queue, where a
  worker forwards it). The queue is declared before the first send of
  each task (on a channel of its own: ``amqp_overflow.py``).
* **Consuming** (``start``, called by the worker's transport): a channel
  per batched task on a connection of their own, made like the broker's
  read connection (``amqp_task_consumers.py``: RabbitMQ closes the
  connection of a consume that races the queue's creation by another
  worker; it is consumed again on a new one), its prefetch the task's
  ``max_held`` plus one ``batch_size``: its running batches, a filling
  buffer, and the next batch in flight (a buffer due as soon as it opens
  does not run with what one read brought). Deliveries join the
  transport's inbox like the main queue's; ``waited`` tells the worker
  which ones came from here (not to be forwarded again).
* **Forwarding** (``forward``, the worker's ``Forwarder``): a batched
  message a plain kicker put on the main queue is published to its
  task's queue (its ``batch_sent_at`` its send time if it had one, else
  now); the original is acked once RabbitMQ confirmed the copy, without
  holding up the worker's reads (``amqp_forward.py``; one it did not
  confirm goes back to the main queue): at-least-once (a worker killed
  between the two forwards it twice).
* **Failover**: when the active consumer's connection closes (its process
  died), RabbitMQ requeues its unacked messages to the next consumer.

* **A backlog shared** (``amqp_handover.py``): a worker behind on a task
  passes the active role on and consumes again once it has room (a
  larger window if quick: ``amqp_window.py``); past 16 batches the queue
  refuses messages, which wait on the main queue (``amqp_overflow.py``).
"""

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from taskiq import AsyncBroker, BrokerMessage

from taskiq_batching._compat import (
    amqp_connect_like_reader,
    amqp_prefetch,
    amqp_queue_settings,
)
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.amqp_forward import Forwards, Settle
from taskiq_batching.transports.amqp_handover import Handover, new_tag
from taskiq_batching.transports.amqp_handovers import Handovers
from taskiq_batching.transports.amqp_headers import Overflowed
from taskiq_batching.transports.amqp_overflow import TaskQueues
from taskiq_batching.transports.amqp_queues import batch_queue_name
from taskiq_batching.transports.amqp_task_consumers import Forget, TaskConsumers
from taskiq_batching.transports.amqp_window import grown_cap
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.shared import kick_each

#: Consumes a queue on a channel under a consumer tag (the transport's).
Consume = Callable[[Any, Any, str], Awaitable[None]]
#: Acks deliveries by their handles (the transport's ``ack``).
Ack = Callable[[Sequence[Any]], Awaitable[None]]


class AmqpBatches:
    """A broker's batched tasks' queues: sends, consumes and forwards.

    :param broker: an ``AioPikaBroker``.
    :param ack: the transport's ``ack`` (forwarded originals).
    :param connect: makes the connection the task queues are consumed on
        (by default, one like the broker's read connection).
    :param release: the transport's ``release`` (originals whose copy
        RabbitMQ did not confirm go back to the main queue).
    :param pending: a channel's unsettled deliveries (``Channels.pending``:
        a worker behind on a task passes its role on, ``amqp_handover.py``).
    :param untap: the transport's ``Channels.untap`` (retired consumers).
    """

    #: A forward is a second durable, confirmed publish: only to fill
    #: batches (``worker/own_share.py``).
    forward_only_to_fill = True

    def __init__(
        self,
        broker: AsyncBroker,
        ack: Ack,
        connect: Callable[[], Awaitable[Any]] | None = None,
        release: Settle | None = None,
        pending: Callable[[Any], dict[int, str]] | None = None,
        untap: Callable[[Any, list[str]], None] | None = None,
    ) -> None:
        self.broker = broker
        self._ack = ack
        self._settings = amqp_queue_settings(broker)
        #: The worker's batched tasks (``configure``).
        self.specs: list[BatchSpec] = []
        #: Prefetch of each consumer of a batched task's queue, by tag.
        self.limits: dict[str, int] = {}
        #: The tasks' consumers, passing their role on when behind.
        self.handovers = Handovers(self.limits, pending or (lambda channel: {}), untap)
        #: Each queue's name -> the write channel it was last declared for.
        self._declared: dict[str, Any] = {}
        #: Each queue's name -> its task's batch_size (its bound).
        self._sizes: dict[str, int] = {}
        self.queues = TaskQueues(self._settings["durable"], self._settings["arguments"])
        #: The connection the task queues are consumed on.
        self.consumers = TaskConsumers(
            connect or (lambda: amqp_connect_like_reader(broker))
        )
        #: The forwards waiting for RabbitMQ's confirms.
        self.forwards = Forwards(
            self._channel,
            self._ack_originals,
            release or _keep,
            amqp_prefetch(broker),
        )

    def serves(self, spec: BatchSpec) -> bool:
        """Every batched task waits in a queue of its own."""
        return True

    def queue_of(self, task_name: str) -> str:
        """The name of a task's queue (``batch_queue_name``)."""
        return batch_queue_name(self._settings["name"], task_name)

    def configure(self, specs: Sequence[BatchSpec]) -> None:
        """The batched tasks this worker runs (known at its start)."""
        self.specs = list(specs)
        for spec in specs:
            self._size_of(spec)

    def _size_of(self, spec: BatchSpec) -> str:
        """Note a task's batch_size by its queue's name; that name."""
        name = self.queue_of(spec.task_name)
        self._sizes[name] = spec.settings.batch_size
        return name

    async def _channel(self, name: str) -> Any:
        """The write channel, this queue declared (aside: ``amqp_overflow.py``)."""
        channel = getattr(self.broker, "write_channel", None)
        if channel is None:
            raise RuntimeError("Please run startup before kicking.")
        if self._declared.get(name) is not channel:
            connection = getattr(self.broker, "write_conn", None)
            await self.queues.declare_aside(connection, name, self._sizes[name])
            self._declared[name] = channel
        return channel

    # --- the worker's consumers --------------------------------------------------

    async def start(self, consume: Consume, forget: Forget) -> None:
        """Consume every batched task's queue, each on a channel of its own.

        The channels are on a connection of their own, consumed again on
        a new one if RabbitMQ was still creating a queue
        (``amqp_task_consumers.py``).

        :param consume: the transport's, for (channel, queue, consumer tag).
        :param forget: the transport's, for consumers whose connection closed.
        """
        if not self.specs:
            return

        async def setup(connection: Any, started: list[str]) -> None:
            self.handovers.each = []  # a connection closed by the race: anew
            for spec in self.specs:
                size, wait = spec.settings.batch_size, spec.settings.batch_timeout
                name = self.queue_of(spec.task_name)
                channel, queue = await self.queues.declare(
                    connection.channel, name, size
                )
                # Per consumer (global=False): the task's own (module docstring).
                limit = spec.settings.max_held + size
                await channel.set_qos(prefetch_count=limit)
                tag = new_tag()
                self.limits[tag] = limit
                await consume(channel, queue, tag)
                started.append(tag)
                cap = grown_cap(limit, size, amqp_prefetch(self.broker))
                handover = Handover(
                    spec.task_name, channel, queue, tag, limit, size, wait, cap
                )
                await self.handovers.add(handover, consume, forget)

        await self.consumers.start(setup, forget)

    async def settled(self) -> None:
        """Wait until every forward so far is confirmed and its originals settled."""
        await self.forwards.settled()

    def check(self) -> None:
        """After a read or an ack: pass a task's role on, or take it again."""
        self.handovers.check()

    async def close(self) -> None:
        """Close the task queues' connection (after the acks are written)."""
        await self.handovers.settled()
        await self.consumers.close()

    def waited(self, delivery: Delivery) -> bool:
        """Whether a delivery is batched where it was read, not forwarded.

        It came from a task's queue, or that queue was full when the
        producer sent it (``amqp_overflow.overflowed``).
        """
        if type(delivery.sent_at) is Overflowed:
            return True
        handle = delivery.handle
        return handle is not None and handle[2] in self.limits

    def outstanding(self, held: Counter[str], prefetch: int | None) -> int:
        """The transport's ``outstanding``, counting the tasks' consumers apart.

        A task's consumer may hold its own prefetch, more than the main
        queue's; only when it is full (nothing more comes until acks) does
        it count as the transport's prefetch, so that buffers flush.

        :param held: deliveries read and unsettled, by consumer tag.
        :param prefetch: the main queue's prefetch.
        :return: the most a main consumer holds, or ``prefetch``.
        """
        # Forwarded originals waiting for their copy's confirm hold no batch.
        flying = self.forwards.by_consumer
        main = max(
            (n - flying[tag] for tag, n in held.items() if tag not in self.limits),
            default=0,
        )
        full = any(held[tag] >= limit for tag, limit in self.limits.items())
        if full and prefetch is not None:
            return max(main, prefetch)
        return main

    # --- sending ----------------------------------------------------------------

    async def send(
        self,
        spec: BatchSpec,
        messages: Sequence[BrokerMessage],
        keys: Sequence[str],
        once: bool,
    ) -> None:
        """Publish one task's messages to its queue (``waiting.WaitingSender``).

        :param spec: the task.
        :param messages: its messages, in order.
        :param keys: unused: one queue serves every key (the worker keys).
        :param once: a publish is never tried again, so always at most once.
        :raises SendManyError: a publish failed (which ones are unknown).
        """
        name = self._size_of(spec)
        channel = await self._channel(name)

        async def publish(message: BrokerMessage) -> None:
            if message.labels.get("delay") is not None:
                await self.broker.kick(message)
                return
            label = self._settings["priority_label"]
            await self.queues.publish_or_kick(
                channel, name, message, label, self.broker.kick
            )

        await kick_each(self.broker, messages, publish)

    # --- forwarding --------------------------------------------------------------

    async def forward(
        self, deliveries: Sequence[tuple[Delivery, BatchSpec, str]]
    ) -> None:
        """Publish main-queue messages to their task's queue; ack them once stored.

        Returns before RabbitMQ confirms the copies (``amqp_forward.py``).

        :param deliveries: ``(delivery, task, key)`` read on the main queue.
        :raises Exception: nothing was published (the worker batches them):
            the channel could not be had, or a forward failed a moment ago.
        """
        moves = [
            (delivery, spec.task_name, self._size_of(spec))
            for delivery, spec, _ in deliveries
        ]
        await self.forwards.forward(moves, time.time())

    async def _ack_originals(self, deliveries: Sequence[Delivery]) -> None:
        await self._ack([delivery.handle for delivery in deliveries])


async def _keep(deliveries: Sequence[Delivery]) -> None:
    """Without a ``release``, originals stay unacked (a closed channel's come back)."""
