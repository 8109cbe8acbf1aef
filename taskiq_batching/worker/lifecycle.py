"""The one lifecycle of a batched message, in taskiq's order, on every path.

taskiq's ``Receiver.callback`` does, for one message: ``pre_execute``
middlewares, ack if ``when_received``, run the task (``on_error``
middlewares on failure), ack if ``when_executed``, ``post_execute``,
store the result (unless ``NoResultError``) and ``post_save``, ack if
``when_saved``; ``manual`` leaves the ack to the task. Every batched
message goes through exactly that here, whether the worker's pump took it
(any broker), taskiq's Receiver handed it over, or ``InMemoryBroker``
sent it: ``accept`` does the steps before the batch runs, ``finish`` the
steps after (``finishing.py``). Steps are per message (one ack controller
each, the same message object in every hook, hooks run in the message's
own context variables as in its own taskiq task); only the round trips
are shared: a batch's acks and results are written together.
"""

import asyncio
import contextvars
import logging
from collections.abc import Sequence

from taskiq import AsyncBroker, TaskiqMessage
from taskiq.abc.middleware import TaskiqMiddleware
from taskiq.acks import AcknowledgeType, parse_acknowledge_type

from taskiq_batching._compat import overrides
from taskiq_batching.core.batcher import Batcher
from taskiq_batching.core.buffer import DeferredAck, Envelope, Held, held_as_read
from taskiq_batching.error_texts import describe
from taskiq_batching.transports.base import ResultWriter, Transport
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.worker.acks import ack_due, deferred_acks
from taskiq_batching.worker.finishing import Finishing
from taskiq_batching.worker.outcomes import call_hook, refused

logger = logging.getLogger("taskiq_batching")

_HOOKS = ("pre_execute", "on_error", "post_execute", "post_save")


class Lifecycle:
    """Accepts batched messages into buffers and finishes them after their batch.

    It is the batcher's ``Finisher``: the worker hands it over (``serve``).

    :param broker: the broker.
    :param batcher: its batcher.
    :param results: stores results.
    :param ack_type: the worker's ``--ack-type``.
    :param transport: acks deliveries (None: messages without acks).
    """

    def __init__(
        self,
        broker: AsyncBroker,
        batcher: Batcher,
        results: ResultWriter,
        ack_type: AcknowledgeType,
        transport: Transport | None = None,
    ) -> None:
        self.broker = broker
        self.batcher = batcher
        self.results = results
        self.ack_type = ack_type
        self.transport = transport
        self.hooks: dict[str, list[TaskiqMiddleware]] = {
            hook: [m for m in broker.middlewares if overrides(m, hook)]
            for hook in _HOOKS
        }
        self.needs_message = any(self.hooks.values())
        #: The steps after the batch.
        self.finishing = Finishing(
            batcher.bounds, results, ack_type, transport, self.hooks
        )
        #: Finish the messages of one batch in taskiq's order: the batcher's
        #: ``Finisher`` (``Finishing.finish``, bound once).
        self.finish = self.finishing.finish
        #: Every acked message's controller until one is asked for.
        self._deferred = None if transport is None else deferred_acks(transport)

    # --- before the batch ---------------------------------------------------

    async def accept(
        self,
        taken: Sequence[tuple[Envelope, Delivery | None]],
        sender_waits: bool = False,
    ) -> list[Held]:
        """Take admitted messages into their buffers, as taskiq's callback starts.

        ``pre_execute`` middlewares, then acks for ``when_received`` (one
        round trip for all), then the item is validated and buffered. A
        message whose middleware fails (or whose ``ack_type`` label taskiq
        refuses) stays unacked and is dropped from the worker, as when its
        taskiq callback fails there. Anything else that fails on a message
        (its arguments, key, policies, deadline: ``policies.admit``) fails
        it alone: it is finished at once with ``BatchItemError`` (stored,
        acked by its ack type), its batch-mates and chunk go on.

        :param taken: each message (decoded, admitted) and its delivery.
        :param sender_waits: a sender waits for each message (as
            ``InMemoryBroker.kick`` waits for taskiq's callback): each gets a
            future resolved when it is finished, and a failure before its
            batch raises to the sender instead of being logged.
        :return: the messages now held.
        """
        held: list[Held] = []
        received = False  # whether any is acked when received
        plain = not self.needs_message
        # The loop looked up once (3.11's get_running_loop calls getpid); its clock
        # read per message, once for stream entries (no send time to convert).
        loop = self.batcher.bind_loop()
        deferred, ack_type, read_at = self._deferred, self.ack_type, loop.time()
        for envelope, delivery in taken:
            if not plain:
                one = await self._receive(envelope, delivery, sender_waits)
            elif (
                isinstance(getattr(delivery, "handle", None), tuple)
                and "ack_type" not in envelope.labels
            ):  # a stream entry (a task stream's too: ``TaskEntry``), acked at
                # the worker's step: held without ``_hold``
                one = held_as_read(envelope, deferred, read_at, ack_type, delivery)
            else:  # no middleware hook: nothing to await, no coroutine
                now = loop.time()
                one = self._hold(envelope, None, envelope, delivery, sender_waits, now)
            if one is not None:
                received |= one.ack_type is AcknowledgeType.WHEN_RECEIVED
                if sender_waits:
                    self.finishing.senders_wait = True
                    one.waiter = loop.create_future()
                held.append(one)
        if received:
            await ack_due(self.transport, held, AcknowledgeType.WHEN_RECEIVED)
        # Nothing awaited since each was taken: its clock reading holds (a
        # send time then converts less than one chunk's holding late).
        fresh = plain and not received
        if not fresh:  # it awaited: bound again, the clock read anew
            loop = self.batcher.bind_loop()
        add = self.batcher.add
        for one in held:
            try:  # ``Batcher.add``, without a call of ours per message
                add(one.message.task_name, one, one.arrived if fresh else loop.time())
            except Exception as exc:
                self._not_added(one, exc)
        return held

    async def _receive(
        self, envelope: Envelope, delivery: Delivery | None, sender_waits: bool
    ) -> Held | None:
        """The steps of taskiq's callback before the ack: None if one failed."""
        try:
            message, scope = await self._pre_execute(envelope)
        except Exception as exc:
            self._refuse(envelope, delivery, sender_waits, exc)
            return None
        now = asyncio.get_running_loop().time()
        return self._hold(message, scope, envelope, delivery, sender_waits, now)

    def _hold(
        self,
        message: TaskiqMessage | Envelope,
        scope: contextvars.Context | None,
        envelope: Envelope,
        delivery: Delivery | None,
        sender_waits: bool,
        now: float,
    ) -> Held | None:
        """A message taken, with its ack controller and ack type: None if one failed.

        :param now: the running loop's time (when it was taken).
        """
        try:
            handle = None if delivery is None else delivery.handle
            # A stream entry (a tuple) is acked: no call per entry read.
            ack = (
                self._deferred if isinstance(handle, tuple) else self._ack_for(delivery)
            )
            one = Held(message, ack, now, scope, ack_type=self.ack_type)
            label = message.labels.get("ack_type")
            if label is not None:  # its own ack type, as taskiq's Receiver reads it
                one.ack_type = parse_acknowledge_type(label)
                self.finishing.labelled = True
            one.delivery = delivery
        except Exception as exc:
            self._refuse(envelope, delivery, sender_waits, exc)
            return None
        return one

    def _refuse(
        self, envelope: Envelope, delivery: Delivery | None, wait: bool, exc: Exception
    ) -> None:
        """A step before the ack failed: the message is dropped from the worker."""
        self.batcher.bounds.release(envelope.task_name)
        self.finishing.forget([delivery])
        if wait:
            raise exc
        # taskiq's callback fails before running the task: unacked.
        logger.error(
            "taskiq_batching: message %s of %s is left unacked: %s",
            envelope.task_id,
            envelope.task_name,
            describe(exc),
            exc_info=exc,
        )

    def _not_added(self, one: Held, exc: Exception) -> None:
        """A message ``Batcher.add`` refused: finished alone (``outcomes.refused``)."""
        spec = self.batcher.specs[one.message.task_name]
        outcome = refused(spec.task_name, one, exc)
        self.batcher.spawn(self.finish(spec, [one], [outcome], 0.0))

    def waits(self, taken: Sequence[tuple[Envelope, Delivery | None]]) -> bool:
        """Whether accepting these messages may wait (middlewares, acks to send).

        :param taken: messages about to be accepted.
        :return: False when ``accept`` runs straight through.
        """
        if self.needs_message or self.ack_type is AcknowledgeType.WHEN_RECEIVED:
            return True
        return any("ack_type" in envelope.labels for envelope, _ in taken)

    def _ack_for(self, delivery: Delivery | None) -> DeferredAck | None:
        if delivery is None or delivery.handle is None:
            return None
        handle = delivery.handle
        # A tuple (a stream entry) is acked; looking ``needs_ack`` up on it
        # would fail, at a cost, for every message read.
        if (
            not isinstance(handle, tuple)
            and getattr(handle, "needs_ack", True) is False
        ):
            return None  # a message taken from a list: read, it has no ack either
        return self._deferred  # None without a transport

    async def _pre_execute(
        self, envelope: Envelope
    ) -> tuple[TaskiqMessage, contextvars.Context]:
        message: TaskiqMessage = envelope.open()
        scope = contextvars.copy_context()
        for middleware in self.hooks["pre_execute"]:
            message = await call_hook(scope, middleware.pre_execute, message)
        return message, scope
