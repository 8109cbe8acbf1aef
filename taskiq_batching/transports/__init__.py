"""Picks the transport for a broker and the result writer for a backend.

This is the one place a broker's kind is looked at. A transport module
serves the brokers of one library (``redis_stream`` and ``redis_list``
for taskiq-redis, ``amqp`` for taskiq-aio-pika, ``nats`` for taskiq-nats)
and is imported only for a broker of that library, so a RabbitMQ user
never imports redis. A new broker is supported by adding a module with
``transport_for(broker, listen, wait_in_broker)`` (the worker's
``Consumer``), ``sender_for(broker, wait_in_broker)`` (the producer's
``Sender``; defined there or imported from its sending module) and
``results_for(backend)`` for a result backend, and naming it here
(docs/design.md, "Adding a broker").
Anything else uses the generic transport, as do taskiq-redis's stream
brokers and result backends when hiredis (redis-py's C reply parser, in
the ``[redis]`` extra) is not installed: their transports read and write
only the way hiredis makes cheap, and the registry says so once. The list
brokers keep theirs (one blocking pop: nothing hiredis makes cheaper, and
taskiq-redis's own list listener, which the generic transport would use,
ends the worker after an idle socket timeout). A stream broker whose
batched tasks should wait in the broker (``wait_in_broker=True``) without
hiredis is refused: its workers would never read what producers with
hiredis put there. ``wait_in_broker`` is
``BatchingMiddleware(wait_in_broker=...)``: whether batched tasks'
messages may wait in the broker (the transport's ``batches``), or are
read and buffered by each worker (None, the default, and False).
"""

import importlib
import logging
from collections.abc import AsyncGenerator, Callable
from types import ModuleType
from typing import Any, TypeVar

from taskiq import AckableMessage, AsyncBroker, AsyncResultBackend

from taskiq_batching.errors import MissingDependencyError
from taskiq_batching.transports.base import ResultWriter, Transport
from taskiq_batching.transports.batch_source import (
    BatchSource,
    Forwarder,
    Taken,
    TakenBatch,
)
from taskiq_batching.transports.consumer import Consumer
from taskiq_batching.transports.delivery import SENT_AT_LABEL, Delivery
from taskiq_batching.transports.generic import GenericResults, GenericTransport
from taskiq_batching.transports.sender import BatchSender, Sender

__all__ = [
    "BatchSender",
    "BatchSource",
    "Delivery",
    "Forwarder",
    "ResultWriter",
    "Sender",
    "Taken",
    "TakenBatch",
    "Transport",
    "results_for",
    "sender_for",
    "SENT_AT_LABEL",
    "stamps_sent_at",
    "transport_for",
]

#: Transport modules by the top-level package of a broker's class.
_TRANSPORTS: dict[str, tuple[str, ...]] = {
    "taskiq_redis": ("redis_stream", "redis_list"),
    "taskiq_aio_pika": ("amqp",),
    "taskiq_nats": ("nats",),
}
#: The modules that read or write only the way hiredis makes cheap.
_NEEDS_HIREDIS = frozenset({"redis_stream", "redis_results"})
#: Result writer modules by the top-level package of a backend's class.
_RESULTS: dict[str, tuple[str, ...]] = {
    "taskiq_redis": ("redis_results",),
}

#: ``stamps_sent_at`` by broker class (looked up once per class).
_stamping: dict[type, bool] = {}

Listen = Callable[[], AsyncGenerator[bytes | AckableMessage, None]]

#: A consumer or a sender, as ``_pick`` makes it.
Side = TypeVar("Side", Consumer[Any], Sender)

logger = logging.getLogger("taskiq_batching")
#: Whether the Redis brokers' fallback to the generic transport was logged.
_warned: set[str] = set()


def transport_for(
    broker: AsyncBroker,
    listen: Listen | None = None,
    wait_in_broker: bool | None = None,
) -> Consumer[Any]:
    """The worker's transport for a broker: its reading side.

    :param broker: any taskiq broker.
    :param listen: its own ``listen`` (before the worker hook wrapped it).
    :param wait_in_broker: True: batched tasks' messages wait in the broker
        wherever its transport can; False: nowhere (each worker buffers what
        it reads); None: the default, which is False (the fleet path is
        opt-in: docs/several-workers.md).
    :return: its library's transport, or the generic one.
    """

    def make(module: ModuleType) -> Consumer[Any] | None:
        made: Consumer[Any] | None = module.transport_for(
            broker, listen, wait_in_broker=wait_in_broker
        )
        return made

    return _pick(broker, wait_in_broker, make, lambda: GenericTransport(broker, listen))


def sender_for(broker: AsyncBroker, wait_in_broker: bool | None = None) -> Sender:
    """The sender a producer sends with (``kiq_many``; ``kiq`` where batches wait).

    Made without I/O and without a consumer; cached per broker and shut
    down with it by ``waiting.py`` and the middleware.

    :param broker: any taskiq broker.
    :param wait_in_broker: as for ``transport_for``.
    :return: its library's sender, or the generic one (``kick`` each).
    """

    def make(module: ModuleType) -> Sender | None:
        made: Sender | None = module.sender_for(broker, wait_in_broker=wait_in_broker)
        return made

    return _pick(broker, wait_in_broker, make, lambda: Sender(broker))


def _pick(
    broker: AsyncBroker,
    wait_in_broker: bool | None,
    make: Callable[[ModuleType], Side | None],
    generic: Callable[[], Side],
) -> Side:
    """What the broker's library module makes (``make``), or the generic one.

    :param broker: any taskiq broker.
    :param wait_in_broker: as for ``transport_for``.
    :param make: a module's ``transport_for`` or ``sender_for`` (None:
        not this module's broker).
    :param generic: the generic consumer or sender.
    :raises MissingDependencyError: a Redis stream broker without hiredis,
        its batched tasks' messages asked to wait in Redis.
    :return: the consumer or sender.
    """
    for module, needs_hiredis in _modules(_TRANSPORTS, broker):
        made = make(module)
        if made is None:
            continue
        if not needs_hiredis or _hiredis():
            return made
        if wait_in_broker:
            raise MissingDependencyError(
                "BatchingMiddleware(wait_in_broker=True) on a Redis stream broker",
                "hiredis",
                "redis",
            )
        break
    return generic()


def stamps_sent_at(broker: AsyncBroker) -> bool:
    """Whether a batched message to this broker carries its send time as a label.

    Only where the broker keeps no send time of its own that the worker
    sees (AMQP: its transport reads the label's header, ``SENT_AT_LABEL``).

    :param broker: any taskiq broker.
    :return: True when its transport module asks for the label.
    """
    kind = type(broker)
    stamps = _stamping.get(kind)
    if stamps is None:
        stamps = _stamping[kind] = any(
            getattr(module, "STAMPS_SENT_AT", False)
            for module, _ in _modules(_TRANSPORTS, broker)
        )
    return stamps


def results_for(backend: AsyncResultBackend[Any]) -> ResultWriter:
    """The result writer for a result backend.

    :param backend: any taskiq result backend.
    :return: its library's writer, or the generic one.
    """
    for module, needs_hiredis in _modules(_RESULTS, backend):
        writer: ResultWriter | None = module.results_for(backend)
        if writer is not None and (not needs_hiredis or _hiredis()):
            return writer
    return GenericResults(backend)


def _hiredis() -> bool:
    """Whether redis-py parses with hiredis: only then the Redis transports.

    Imported here, for a taskiq-redis broker or backend only (it imports
    redis).
    """
    from taskiq_batching._compat.redis_py import hiredis_available

    if hiredis_available():
        return True
    if "taskiq_redis" not in _warned:
        _warned.add("taskiq_redis")
        logger.warning(
            "taskiq_batching: hiredis is not installed: taskiq-redis stream "
            "brokers and result backends use the generic transport (each message read, "
            "acked and its result stored one by one, as taskiq-redis does); "
            'pip install "taskiq-batching[redis]" for the Redis transports'
        )
    return False


def _modules(table: dict[str, tuple[str, ...]], obj: object) -> list[tuple[Any, bool]]:
    """The transport modules of an object's library, each with whether it needs hiredis.

    A module that needs hiredis still says whether the object is its kind;
    the caller then falls back (or refuses) when hiredis is missing.
    """
    names: list[str] = []
    for cls in type(obj).__mro__:
        names.extend(table.get(cls.__module__.partition(".")[0], ()))
    return [
        (importlib.import_module(f"{__name__}.{name}"), name in _NEEDS_HIREDIS)
        for name in dict.fromkeys(names)
    ]
