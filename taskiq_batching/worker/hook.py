"""Where the plugin meets taskiq: the worker's ``listen()`` and ``InMemoryBroker``.

On a worker (``taskiq worker``, or taskiq's Receiver driven by a test),
``broker.listen()`` is wrapped for this broker instance: the Receiver that
calls it is known (a ``BatchingReceiver`` says so itself, through
``listening_receiver``) or else found (``_compat.calling_receiver``, a
look at the calling frames, for taskiq's default Receiver), its settings
read, and the pump (``pump.py``) becomes its listener. The Receiver
itself is left as it is: it only ever gets the deliveries of tasks the
worker does not batch.

``InMemoryBroker`` has no listener: ``kick`` calls its Receiver's
callback directly; that callback is routed so that messages of batched
tasks go through the same lifecycle, each sender waiting for its
message to be finished, as taskiq's callback makes it wait.
"""

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator
from contextvars import ContextVar
from typing import Any

from taskiq import AsyncBroker, InMemoryBroker
from taskiq.receiver import Receiver

from taskiq_batching._compat import (
    calling_receiver,
    in_memory_receiver,
    route_callback,
    shadow_listen,
)
from taskiq_batching.core.batcher import Batcher
from taskiq_batching.core.buffer import Envelope
from taskiq_batching.core.call import RunOptions
from taskiq_batching.core.ports import Serving
from taskiq_batching.labels import BATCH_LABEL
from taskiq_batching.tasks import adopt
from taskiq_batching.tracing import tracer_for
from taskiq_batching.transports import results_for, transport_for
from taskiq_batching.transports.base import Transport
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.worker.decode import decode
from taskiq_batching.worker.lifecycle import Lifecycle
from taskiq_batching.worker.options import WorkerOptions
from taskiq_batching.worker.pump import Pump

logger = logging.getLogger("taskiq_batching")

#: The Receiver listening in this context, when it said so itself.
_listening: ContextVar[Receiver | None] = ContextVar(
    "taskiq_batching_listening_receiver", default=None
)


@contextlib.contextmanager
def listening_receiver(receiver: Receiver) -> Iterator[None]:
    """Make ``receiver`` the one that listens, in this context.

    ``broker.listen()`` called from this context, or from a task started
    in it, then serves ``receiver`` (when it is the receiver's broker):
    no look at the calling frames.

    :param receiver: the Receiver about to listen.
    :return: a context manager; the previous value is restored on exit.
    """
    token = _listening.set(receiver)
    try:
        yield
    finally:
        _listening.reset(token)


def handed_receiver(broker: AsyncBroker) -> Receiver | None:
    """The Receiver that said it listens to ``broker``, in this context.

    :param broker: the broker whose ``listen()`` is called.
    :return: the Receiver, or None (then look at the calling frames).
    """
    receiver = _listening.get()
    return receiver if receiver is not None and receiver.broker is broker else None


def attach(
    broker: AsyncBroker,
    batcher: Batcher,
    opened: Callable[[Transport], None],
    wait_in_broker: bool | None = None,
) -> None:
    """Hook the batcher into the broker's worker side.

    :param broker: the broker.
    :param batcher: its batcher.
    :param opened: told of each transport made, for the broker's shutdown.
    :param wait_in_broker: whether batched messages wait in the broker
        (``BatchingMiddleware(wait_in_broker=...)``; None: the default, no).
    """

    # ``original`` (the broker's own listen) is set below, when this shadows it.
    def listen() -> AsyncGenerator[Any, None]:
        # ``calling_receiver`` must be called here: it counts frames from this one.
        receiver = handed_receiver(broker) or calling_receiver()
        _adopt_registered(broker)
        if receiver is None or not batcher.specs:
            if batcher.specs:
                logger.warning(
                    "taskiq_batching: %s.listen() was not called by a taskiq "
                    "Receiver: messages of batched tasks are not batched",
                    type(broker).__name__,
                )
            return original()
        options = WorkerOptions.of(receiver)
        transport = transport_for(broker, original, wait_in_broker=wait_in_broker)
        opened(transport)
        lifecycle = Lifecycle(
            broker,
            batcher,
            results_for(broker.result_backend),
            options.ack_type,
            transport,
        )
        # A transport that knows when the broker took deliveries back (AMQP).
        lost = getattr(transport, "lost", None)
        batcher.serve(_serving(broker, options, lifecycle, lost))
        pump = Pump(broker, batcher, lifecycle, transport, options)
        _warn_at_start(broker, batcher, transport)
        batcher.reopen()
        return pump.deliveries()

    original = shadow_listen(broker, listen)
    if isinstance(broker, InMemoryBroker):
        _attach_in_memory(broker, batcher)


def _adopt_registered(broker: AsyncBroker) -> None:
    # A batched task registered without going through the guard of
    # declarations (``tasks.adopt``) would run once per message.
    for task in list(broker.local_task_registry.values()):
        if task.labels.get(BATCH_LABEL) is True:
            adopt(task)


def _serving(
    broker: AsyncBroker,
    options: WorkerOptions,
    lifecycle: Lifecycle,
    lost: Callable[[Any], bool] | None = None,
) -> Serving:
    """What the batcher needs from this worker to run and finish batches."""
    tracer = tracer_for(broker)
    return Serving(
        options=RunOptions() if options.run is None else options.run,
        validate=options.validate,
        finisher=lifecycle,
        span=None if tracer is None else tracer.span,
        lost=lost,
    )


def _attach_in_memory(broker: InMemoryBroker, batcher: Batcher) -> None:
    """Route ``InMemoryBroker.kick``'s messages of batched tasks to the lifecycle."""
    lifecycles: dict[tuple[int, ...], Lifecycle] = {}

    def lifecycle() -> Lifecycle:
        # Built on first use, again if they change: middlewares and the
        # result backend may be set after this middleware.
        key = (id(broker.result_backend), *map(id, broker.middlewares))
        if key not in lifecycles:
            options = WorkerOptions.of(in_memory_receiver(broker))
            lifecycles.clear()
            lifecycles[key] = Lifecycle(
                broker, batcher, results_for(broker.result_backend), options.ack_type
            )
            batcher.serve(_serving(broker, options, lifecycles[key]))
        return lifecycles[key]

    async def send(envelope: Envelope, data: bytes) -> None:
        batcher.senders_wait(bool(broker.await_inplace))
        try:
            await batcher.bounds.admit(envelope.task_name)
        finally:
            batcher.bounds.arrived()
        # As read, without an ack handle: its size counts, as on a worker.
        taken = [(envelope, Delivery(data))]
        held = await lifecycle().accept(taken, sender_waits=True)
        for one in held:
            if one.waiter is not None:
                await one.waiter

    def route(message: Any) -> Callable[[], Coroutine[Any, Any, None]] | None:
        if not isinstance(message, bytes) or not batcher.specs:
            return None
        envelope = decode(broker, message)
        if envelope is None or envelope.task_name not in batcher.specs:
            return None
        # Sent now, run by a task that has not started yet: a shutdown
        # right after the kiq waits for it (``Batcher.drain``).
        batcher.bounds.expect()
        return lambda: send(envelope, message)

    route_callback(in_memory_receiver(broker), route)


def _warn_at_start(broker: AsyncBroker, batcher: Batcher, transport: Transport) -> None:
    specs = list(batcher.specs.values())
    transport.check(specs)
    if not transport.acknowledges:
        logger.warning(
            "taskiq_batching: %s does not acknowledge messages: what a worker "
            "holds (buffered or running batches) is lost if it crashes; a "
            "graceful stop (SIGTERM/SIGINT) still finishes it",
            type(broker).__name__,
        )
    prefetch = transport.prefetch
    if prefetch is None:
        return
    wanted = sum(spec.settings.batch_size for spec in specs)
    if wanted > prefetch:
        sizes = ", ".join(
            f"{spec.task_name} (batch_size={spec.settings.batch_size})"
            for spec in specs
        )
        logger.warning(
            "taskiq_batching: %s gives this worker at most %d unacked messages "
            "(its prefetch), shared by every task; the batched tasks %s want "
            "%d: when the shared budget is used up, buffers flush early "
            "(flush_reason=pressure) and batches are smaller. Give the "
            "broker a prefetch of at least %d.",
            type(broker).__name__,
            prefetch,
            sizes,
            wanted,
            2 * wanted,
        )
