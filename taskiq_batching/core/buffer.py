"""What waits to be batched: held messages, and buffers of them."""

import asyncio
import contextvars
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from taskiq import AsyncBroker, Context, TaskiqMessage
from taskiq.acks import AckController, AcknowledgeType


@dataclass(slots=True)
class Envelope:
    """The parts of a decoded message a batch needs, without the pydantic model.

    A ``TaskiqMessage`` costs about 2 KB; this about half. The model is
    built once, when something needs it (a middleware, a ``Context``), and
    then kept: every later step sees that same object. ``size`` is the
    message's wire bytes, when the worker read it (0 when unknown).
    """

    task_id: str
    task_name: str
    labels: dict[str, Any]
    args: list[Any]
    kwargs: dict[str, Any]
    size: int = 0

    @classmethod
    def of(cls, message: TaskiqMessage) -> "Envelope":
        """Keep the parts of a message (labels already parsed).

        :param message: a decoded message.
        :return: its envelope.
        """
        return cls(
            message.task_id,
            message.task_name,
            message.labels,
            message.args,
            message.kwargs,
        )

    def open(self) -> TaskiqMessage:
        """Build the message, labels already parsed (nothing validated again).

        :return: the taskiq message.
        """
        return TaskiqMessage.model_construct(
            task_id=self.task_id,
            task_name=self.task_name,
            labels=self.labels,
            labels_types=None,
            args=self.args,
            kwargs=self.kwargs,
        )


class DeferredAck:
    """A message's ack controller, not made until something asks for it.

    Most messages are acked in bulk (``worker.acks.ack_due``) and their
    controller is never seen: making one per message (with taskiq's
    callable in it) would cost objects the garbage collector counts, for
    nothing. Two of these are shared by every message of a worker: one
    for messages not acked yet, one (``done``) for those acked. A task
    that asks for its message's controller (its ``Context``, through
    ``Held.context_for``) gets it made then, in the same state.

    :param make: makes a message's own controller (not acked yet).
    :param is_acked: the state this one stands for.
    """

    __slots__ = ("done", "is_acked", "make")

    def __init__(
        self, make: "Callable[[Held], AckController]", is_acked: bool = False
    ) -> None:
        self.make = make
        self.is_acked = is_acked
        #: The state after the ack: itself for the acked one.
        self.done: DeferredAck = self if is_acked else DeferredAck(make, is_acked=True)

    def controller(self, held: "Held") -> AckController:
        """The message's own controller, made now, in this state.

        :param held: the message.
        :return: its controller.
        """
        made = self.make(held)
        made.is_acked = self.is_acked
        return made


#: A message sent longer ago than this counts as sent this long ago: it is
#: overdue either way, and the times derived from it stay ordinary numbers.
MAX_AGE_SECONDS = 86400.0


@dataclass(slots=True, eq=False)
class Held:
    """One message of a batched task that a worker holds until it is finished.

    :param message: the message, as the ``pre_execute`` middlewares left it
        (the same object is passed to every later hook), or its envelope
        when no middleware needs the object.
    :param ack: its one ack controller (None when the broker has no acks),
        or a shared ``DeferredAck`` until one is asked for: a message is
        acked at most once, alone or with its batch.
    :param arrived: event-loop time when the worker took it, in seconds.
        Its ``batch_timeout`` counts from ``sent_at`` instead, when its
        delivery knows when it was sent.
    :param scope: the context variables its middleware hooks run in (a
        span of a tracing middleware lives there), when it has hooks.
    :param item: its validated item, once it is in a buffer.
    :param waiter: resolved when it is finished, for a sender waiting on
        it (``InMemoryBroker``); None otherwise.
    :param context: its taskiq ``Context``, made when first needed.
    :param ack_type: when it is acked (its label, or the worker's default).
    :param delivery: what its transport read (to give it back at a stop).
    :param outcome: what its batch gave it, once the batch is finished.
    :param result: the result taskiq would store for it, once finished.
    :param ok: it is still being finished (no middleware hook failed on it).
    :param error: why its result could not be stored, if it could not.
    """

    message: TaskiqMessage | Envelope
    ack: AckController | DeferredAck | None
    arrived: float
    scope: contextvars.Context | None = None
    item: Any = None
    waiter: "asyncio.Future[None] | None" = None
    context: Context | None = None
    ack_type: AcknowledgeType = AcknowledgeType.WHEN_SAVED
    delivery: Any = None
    # Its finishing (``worker/outcomes.py``), set on the message itself: no
    # object more per message.
    outcome: Any = None
    result: Any = None
    ok: bool = True
    error: BaseException | None = None

    @property
    def task_id(self) -> str:
        """The message's task_id."""
        return self.message.task_id

    @property
    def size(self) -> int:
        """Its wire bytes, as read (0 when unknown: a sender's ``TaskiqMessage``)."""
        data = getattr(self.delivery, "data", None)
        if isinstance(data, bytes):
            return len(data)
        if isinstance(self.message, Envelope):
            return self.message.size
        return 0

    def sent_at(self, now: float) -> float:
        """Event-loop time it was sent, bounded by when the worker took it.

        A sender's clock may run ahead of the worker's, or lie: a send time
        after ``arrived`` counts as ``arrived`` (nothing waits longer than it
        would have), one older than ``MAX_AGE_SECONDS`` as that old, one that
        is not a finite number is ignored.

        :param now: the event loop's time now.
        :return: event-loop time its batch timer counts from.
        """
        given = getattr(self.delivery, "sent_at", None)
        if given is None:  # unknown (a Redis stream's entries)
            return self.arrived
        if type(given) is float:  # what transports give: no conversion
            sent_at = given
        elif isinstance(given, bool) or not isinstance(given, (int, float)):
            return self.arrived
        else:
            try:
                sent_at = float(given)
            except OverflowError:  # an int no float holds
                return self.arrived
        if not math.isfinite(sent_at):
            return self.arrived
        sent = now - (time.time() - sent_at)
        return min(max(sent, self.arrived - MAX_AGE_SECONDS), self.arrived)

    def taskiq_message(self) -> TaskiqMessage:
        """The message object, built from its envelope once if need be.

        :return: the message.
        """
        if isinstance(self.message, Envelope):
            self.message = self.message.open()
        return self.message

    def context_for(self, broker: AsyncBroker) -> Context:
        """The message's taskiq ``Context`` (its ack controller included).

        :param broker: the broker it came from.
        :return: the context, made once.
        """
        if self.context is None:
            self.context = Context(self.taskiq_message(), broker, self.controller())
        return self.context

    def controller(self) -> AckController | None:
        """Its one ack controller, made now if it was deferred (``DeferredAck``).

        :return: the controller (None when the broker has no acks).
        """
        ack = self.ack
        if isinstance(ack, DeferredAck):
            ack = self.ack = ack.controller(self)
        return ack


_new = object.__new__


def held_as_read(
    message: Envelope,
    ack: AckController | DeferredAck | None,
    arrived: float,
    ack_type: AcknowledgeType,
    delivery: Any,
) -> Held:
    """``Held(message, ack, arrived, ack_type=a, delivery=d)`` for each message read.

    The same fields, set here: the dataclass's constructor, called through
    its type, costs several hundred machine instructions more per message.

    :return: the message held.
    """
    one: Held = _new(Held)
    one.message = message
    one.ack = ack
    one.arrived = arrived
    one.scope = None
    one.item = None
    one.waiter = None
    one.context = None
    one.ack_type = ack_type
    one.delivery = delivery
    one.outcome = None
    one.result = None
    one.ok = True
    one.error = None
    return one


@dataclass(slots=True, eq=False)
class Buffer:
    """Messages of one task, with equal extra arguments, waiting to run together.

    :param task_name: the batched task.
    :param key: what its messages share (see ``keys.batch_key``).
    :param args: positional arguments after the item, shared by every message.
    :param kwargs: keyword arguments, shared by every message.
    :param opened_at: event-loop time its batch timer counts from, in
        seconds: when its first message was taken, or the earliest send
        time its messages' deliveries know (``Held.sent_at``).
    :param calls: calls of the batch function so far (isolation re-runs).
    :param cost: the sum of its items' ``batch_cost``.
    :param size: the sum of its messages' wire bytes.
    :param deadline: event-loop time by which it must start (its earliest
        item's ``batch_deadline``), or None.
    :param overdue: its ``batch_timeout`` passed while it held fewer than
        ``batch_min_size`` messages.
    :param sent_floor: the send time (epoch seconds, as its delivery gave
        it) of the message its start came from (``core/timers.py``), or
        infinity: a later message sent no earlier leaves its timer alone.
    """

    task_name: str
    key: Hashable
    args: list[Any]
    kwargs: dict[str, Any]
    opened_at: float
    items: list[Held] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    calls: int = 0
    cost: float = 0.0
    size: int = 0
    deadline: float | None = None
    deadline_timer: asyncio.TimerHandle | None = None
    overdue: bool = False
    sent_floor: float = math.inf

    def close(self) -> None:
        """Stop its timers: it is being flushed."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
            self.deadline_timer = None
