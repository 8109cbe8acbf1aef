"""RabbitMQ: a plain producer's batched messages moved to their task's queue, pipelined.

The worker forwards what it reads of them on the main queue
(``amqp_batches.AmqpBatches.forward``) inside its read loop. Waiting
there for RabbitMQ's publisher confirms held that loop up: a persistent
message is confirmed once the queue wrote it to disk, measured ~100 ms
per chunk on a busy box (2,000 msg/s, ``bench.fleet --paths
wait-plain``), every worker then read one chunk per confirm, and the
messages waited on the main queue meanwhile (p99 1-1.9 s).

So ``Forwards.forward`` publishes a chunk and returns once its frames are
queued for writing; a task of its own awaits the confirms, then acks the
originals whose copy RabbitMQ confirmed (at-least-once, as before: an
original is acked only after its copy is stored) and gives the others
back to the main queue (``basic.nack`` with requeue: a worker reads and
forwards them again; nothing is lost). A task's queue refuses a copy
when it is full (``amqp_overflow.py``): expected at saturation, logged at
INFO; other failures at WARNING. After such a failure the next
forwards raise for ``PAUSE_SECONDS``: the worker then batches what it
reads itself (``worker/taking.py``'s fallback) instead of moving the same
messages round in a loop. At most ``MAX_UNCONFIRMED`` messages (and half
the main queue's prefetch) wait for their confirm at once (a forward past
it waits for the oldest chunk), and ``by_consumer`` counts them per main
consumer: they hold its prefetch, not a batch (``AmqpBatches.outstanding``);
``settled`` waits for every chunk (the transport's ``close``, before the
acks are flushed), at most ``SETTLE_GRACE`` seconds: a server that stops
confirming (a memory or disk alarm blocks publishers) must not hang the
worker's stop. The originals still unacked then go back to the main queue
when the channel closes, and their copies may run too (at-least-once).

Publishes go straight to aiormq's channel (the one under the broker's
``write_channel``, publisher confirms on), a chunk encoded by hand
(``amqp_wire.py``) and written in one piece
(``_compat.amqp_publish_frames``), else one ``basic_publish`` each:
aio-pika's ``Exchange.publish`` cost ~85 µs of CPU per message here, in
the same loop that batches.
"""

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pamqp.commands import Basic

from taskiq_batching._compat import amqp_publish_frames
from taskiq_batching.error_texts import describe
from taskiq_batching.transports.amqp_overflow import refused
from taskiq_batching.transports.amqp_wire import publish_frames
from taskiq_batching.transports.batch_source import ForwardingPaused
from taskiq_batching.transports.delivery import SENT_AT_LABEL, Delivery

logger = logging.getLogger("taskiq_batching")

#: Messages whose copy may wait for its confirm at once, per worker.
MAX_UNCONFIRMED = 1000
#: Seconds the worker batches what it reads itself after a failed forward.
PAUSE_SECONDS = 5.0
#: Seconds a stopping worker waits for its forwards' confirms (``settled``).
SETTLE_GRACE = 10.0
#: AMQP's delivery mode of a persistent message.
PERSISTENT = 2

#: One message to move: (its delivery on the main queue, task name, queue).
Move = tuple[Delivery, str, str]
#: Settles deliveries of the main queue (the transport's ack or release).
Settle = Callable[[Sequence[Delivery]], Awaitable[None]]


class Forwards:
    """Publishes moves, and settles their originals once RabbitMQ answered.

    :param channel: the aio-pika channel to publish on, with a queue
        declared on it (``AmqpBatches._channel``).
    :param ack: acks originals whose copy is confirmed.
    :param release: gives the others back to the main queue.
    :param prefetch: the main queue's prefetch (None: none).
    """

    def __init__(
        self,
        channel: Callable[[str], Awaitable[Any]],
        ack: Settle,
        release: Settle,
        prefetch: int | None = None,
    ) -> None:
        self._channel = channel
        self._ack = ack
        self._release = release
        self._prefetch = prefetch
        #: Chunks waiting for their confirms, oldest first, with their size.
        self.flying: deque[tuple[asyncio.Future[None], int]] = deque()
        #: Messages in those chunks.
        self.unconfirmed = 0
        #: The same, by the consumer tag of their original.
        self.by_consumer: Counter[str] = Counter()
        #: Loop time until which forwards raise ``ForwardingPaused``.
        self.paused_until = 0.0

    async def forward(self, moves: Sequence[Move], now: float) -> None:
        """Publish each message to its queue; return before RabbitMQ confirms.

        :param moves: the messages, in order.
        :param now: the send time of those that carry none (epoch seconds).
        :raises ForwardingPaused: a forward failed less than
            ``PAUSE_SECONDS`` ago (none of these is published).
        :raises Exception: the channel could not be had (none published).
        """
        self._drop_done()
        if asyncio.get_running_loop().time() < self.paused_until:
            raise ForwardingPaused("a forward failed a moment ago")
        underlays: dict[str, Any] = {}
        for _, _, queue in moves:
            if queue not in underlays:
                channel = await self._channel(queue)
                underlays[queue] = await channel.get_underlay_channel()
        publishes = await _publish(moves, underlays, now)
        deliveries = [delivery for delivery, _, _ in moves]
        chunk = asyncio.ensure_future(self._settle(deliveries, publishes))
        self.flying.append((chunk, len(moves)))
        self.unconfirmed += len(moves)
        self.by_consumer.update(_consumers(deliveries))
        bound = MAX_UNCONFIRMED
        if self._prefetch is not None:
            bound = min(bound, max(self._prefetch // 2, 1))
        while self.unconfirmed > bound and self.flying:
            # Not cancelled with this forward: its originals still get settled.
            await asyncio.wait({self.flying[0][0]})
            self._drop_done()

    async def _settle(self, deliveries: list[Delivery], publishes: list[Any]) -> None:
        """Ack the confirmed moves' originals, give the others back (never raises)."""
        left = deliveries  # still counted in by_consumer
        try:
            answers = await asyncio.gather(*publishes, return_exceptions=True)
            stored: list[Delivery] = []
            failed: list[Delivery] = []
            for delivery, answer in zip(deliveries, answers, strict=True):
                (stored if type(answer) is Basic.Ack else failed).append(delivery)
            if failed:
                self.paused_until = asyncio.get_running_loop().time() + PAUSE_SECONDS
                _log_failed(answers, len(failed), len(deliveries))
            # Each group leaves by_consumer as its settle leaves the
            # transport's held count (one loop step): outstanding, their
            # difference, neither dips nor jumps in between.
            self._landed(stored)
            left = failed
            await self._settled(stored, self._ack, "ack")
            self._landed(failed)
            left = []
            await self._settled(failed, self._release, "give back")
        finally:
            self.unconfirmed -= len(deliveries)
            self._landed(left)

    def _landed(self, deliveries: list[Delivery]) -> None:
        """No longer count these as waiting for their copy's confirm."""
        if deliveries:
            self.by_consumer.subtract(_consumers(deliveries))
            self.by_consumer += Counter()  # drops the zeros

    async def _settled(
        self, deliveries: list[Delivery], settle: Settle, verdict: str
    ) -> None:
        if not deliveries:
            return
        try:
            await settle(deliveries)
        except Exception as exc:
            # Their channel closed: RabbitMQ gives them back itself.
            logger.warning(
                "taskiq_batching: cannot %s %d forwarded message(s) on the main "
                "queue (RabbitMQ delivers them again): %s",
                verdict,
                len(deliveries),
                describe(exc),
            )

    def _drop_done(self) -> None:
        while self.flying and self.flying[0][0].done():
            self.flying.popleft()

    async def settled(self, timeout: float = SETTLE_GRACE) -> None:
        """Wait until every chunk so far is confirmed and its originals settled.

        :param timeout: seconds at most; what is left unconfirmed is logged.
        """
        chunks = [chunk for chunk, _ in self.flying]
        if chunks:
            _, late = await asyncio.wait(chunks, timeout=timeout)
            if late:
                logger.warning(
                    "taskiq_batching: RabbitMQ confirmed no copy of %d forwarded "
                    "message(s) within %.0f s: their originals go back to the "
                    "main queue when the channel closes, and may run twice",
                    sum(n for chunk, n in self.flying if chunk in late),
                    timeout,
                )
        self._drop_done()


def _log_failed(answers: Sequence[Any], failed: int, total: int) -> None:
    """Say why forwards failed: a full task's queue is expected at saturation."""
    wrong = [answer for answer in answers if type(answer) is not Basic.Ack]
    if all(refused(answer) for answer in wrong):
        # Its bound (amqp_overflow.py): the backlog is shared this way.
        logger.info(
            "taskiq_batching: a batched task's queue is full (RabbitMQ refused "
            "%d of %d forwarded message(s)): their originals go back to the "
            "main queue, and this worker batches what it reads itself for %.0f s",
            failed,
            total,
            PAUSE_SECONDS,
        )
        return
    why = wrong[0]
    logger.warning(
        "taskiq_batching: RabbitMQ did not store %d of %d forwarded "
        "message(s) in their batched task's queue (%s): their "
        "originals go back to the main queue, and this worker "
        "batches what it reads itself for %.0f s",
        failed,
        total,
        describe(why) if isinstance(why, BaseException) else why,
        PAUSE_SECONDS,
    )


def _consumers(deliveries: Sequence[Delivery]) -> list[str]:
    """The consumer tag of each delivery (its handle's third item)."""
    return [d.handle[2] for d in deliveries if isinstance(d.handle, tuple)]


def _headers(delivery: Delivery, task_name: str, now: float) -> dict[str, str]:
    sent_at = delivery.sent_at if delivery.sent_at is not None else now
    return {"task_name": task_name, SENT_AT_LABEL: repr(sent_at)}


async def _publish(
    moves: Sequence[Move], underlays: dict[str, Any], now: float
) -> list[Any]:
    """Publish the moves; an awaitable confirmation for each, in order.

    Encoded by hand and written in one piece when the channels are all one
    (``_compat.amqp_publish_frames``), else one ``basic_publish`` each.
    """
    channels = {id(underlay) for underlay in underlays.values()}
    if len(channels) == 1:
        [channel] = set(underlays.values())
        size = getattr(channel, "max_content_size", None)
        number = getattr(channel, "number", None)
        if isinstance(size, int) and isinstance(number, int) and size > 0:
            frames = [
                publish_frames(number, queue, _headers(d, name, now), d.data, size)
                for d, name, queue in moves
            ]
            futures = await amqp_publish_frames(channel, frames)
            if futures is not None:
                return futures
    return [
        underlays[queue].basic_publish(
            d.data,
            routing_key=queue,
            properties=Basic.Properties(
                headers=dict(_headers(d, name, now)), delivery_mode=PERSISTENT
            ),
            wait=False,
        )
        for d, name, queue in moves
    ]
