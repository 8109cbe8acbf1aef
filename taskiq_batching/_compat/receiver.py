"""How taskiq's worker side is joined: ``listen()``, the Receiver, ``InMemoryBroker``.

Tested with taskiq 0.13.0, the only release ``pyproject.toml`` allows
(``>=0.13,<0.14``); ``.ci/matrix`` runs the tests of this module on
every row.
"""

import functools
import sys
from collections.abc import AsyncGenerator, Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass
from types import FrameType
from typing import Any

from taskiq import AckableMessage, AsyncBroker, InMemoryBroker
from taskiq.acks import AcknowledgeType
from taskiq.receiver import Receiver

#: What ``broker.listen`` is called as.
Listen = Callable[[], AsyncGenerator[bytes | AckableMessage, None]]


def shadow_listen(broker: AsyncBroker, listen: Listen) -> Listen:
    """Make ``broker.listen()`` call ``listen``, for this broker instance only.

    Relies on: taskiq's Receiver looking ``listen`` up on the broker
    instance when it starts listening (``self.broker.listen()`` in
    ``Receiver.prefetcher``), not on its class and not before: an instance
    attribute set any time before the worker listens shadows the method.
    Nothing else of taskiq calls ``listen``.

    :param broker: the broker.
    :param listen: what its ``listen()`` becomes.
    :return: the broker's own ``listen``, as it was (a bound method).
    """
    original: Listen = broker.listen
    broker.listen = listen  # type: ignore[method-assign]
    return original


def calling_receiver(depth: int = 2) -> Receiver | None:
    """The taskiq ``Receiver`` that called ``broker.listen()``, if any.

    ``taskiq worker`` builds the Receiver itself and hands it to nobody,
    so this is the only way to learn its settings (``--ack-type``,
    ``--max-tasks-per-child``, ``--wait-tasks-timeout``...).

    Relies on: ``Receiver.prefetcher`` calling ``self.broker.listen()``
    itself, so the Receiver is ``self`` in one of the three frames above
    ``listen``'s (a frame lookup, ``sys._getframe``).

    :param depth: frames between the caller of this function and ``listen``'s caller.
    :return: the Receiver, or None when ``listen()`` has another caller.
    """
    frame: FrameType | None = sys._getframe(depth)
    for _ in range(3):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Receiver):
            return candidate
        frame = frame.f_back
    return None


@dataclass(frozen=True, slots=True)
class ReceiverSettings:
    """What a Receiver was started with (``taskiq worker``'s options).

    :param ack_type: ``--ack-type`` (taskiq's default when not given).
    :param max_tasks_to_execute: ``--max-tasks-per-child``; None or 0: no limit.
    :param wait_tasks_timeout: ``--wait-tasks-timeout``; None: wait for all.
    :param validate_params: False under ``--no-parse``.
    :param executor: runs sync functions (``--use-process-pool``...).
    :param propagate_exceptions: whether errors are stored in results.
    """

    ack_type: AcknowledgeType
    max_tasks_to_execute: int | None
    wait_tasks_timeout: float | None
    validate_params: bool
    executor: Executor | None
    propagate_exceptions: bool


def receiver_settings(receiver: Receiver) -> ReceiverSettings:
    """Read the settings a Receiver was built with.

    Relies on: ``Receiver.__init__`` keeping its arguments as attributes,
    under these names: ``ack_time`` (its ``ack_type`` argument, or
    ``WHEN_SAVED``), ``max_tasks_to_execute``, ``wait_tasks_timeout``,
    ``validate_params``, ``executor``, ``propagate_exceptions``. They are
    not documented; the Receiver's own methods read them.

    :param receiver: the Receiver.
    :return: its settings.
    """
    return ReceiverSettings(
        ack_type=receiver.ack_time,
        max_tasks_to_execute=receiver.max_tasks_to_execute,
        wait_tasks_timeout=receiver.wait_tasks_timeout,
        validate_params=receiver.validate_params,
        executor=receiver.executor,
        propagate_exceptions=receiver.propagate_exceptions,
    )


def share_stop_budget(receiver: Receiver, seconds: float | None) -> None:
    """Make the Receiver wait for its own tasks at most ``seconds`` more.

    The worker spends part of ``--wait-tasks-timeout`` finishing batches
    while ``listen()``'s generator closes; what is left is the Receiver's,
    so that a stop takes ``--wait-tasks-timeout`` in all, not twice that.

    Relies on: the Receiver's runner reading ``self.wait_tasks_timeout``
    when the prefetcher has finished, after it closed ``listen()``'s
    generator (not once, when it starts).

    :param receiver: the Receiver.
    :param seconds: the budget left, or None for no bound.
    """
    receiver.wait_tasks_timeout = seconds


def in_memory_receiver(broker: InMemoryBroker) -> Receiver:
    """The Receiver that ``InMemoryBroker`` runs its messages with.

    Relies on: ``InMemoryBroker.__init__`` building one Receiver, kept as
    ``self.receiver``, from its own options (``cast_types``,
    ``max_async_tasks``, ``propagate_exceptions``...), and ``kick`` calling
    that Receiver's ``callback`` (see ``route_callback``).

    :param broker: the broker.
    :return: its Receiver.
    """
    return broker.receiver


def route_callback(
    receiver: Receiver,
    route: Callable[[Any], Callable[[], Coroutine[Any, Any, None]] | None],
) -> None:
    """Let ``route`` take some deliveries before the Receiver's own callback.

    ``route`` returns a coroutine factory for the deliveries it takes,
    None for the others, which reach the original callback exactly as
    before (a synchronous failure of it still raises synchronously).

    Relies on: everything that hands the Receiver a delivery calling
    ``receiver.callback(message=..., raise_err=...)`` through the instance
    (the Receiver's runner; ``InMemoryBroker.kick`` with ``message=``
    only): an instance attribute shadows the method for this Receiver only.

    :param receiver: the Receiver.
    :param route: decides, per delivery.
    """
    original = receiver.callback

    @functools.wraps(original)
    def callback(message: Any, raise_err: bool = False) -> Any:
        taken = route(message)
        if taken is not None:
            return taken()
        return original(message=message, raise_err=raise_err)

    receiver.callback = callback  # type: ignore[method-assign]
