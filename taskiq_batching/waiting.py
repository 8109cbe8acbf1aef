"""Sending a batched task's messages to where they wait in the broker.

With ``BatchingMiddleware(wait_in_broker=True)`` on a broker whose
sender has a ``batch_sender`` (taskiq-redis's stream and list brokers,
``transports/redis_batches.py`` and ``transports/redis_list_batches.py``;
taskiq-nats's pull broker, ``transports/nats_send.py``), ``kiq`` and
``kiq_many`` of a batched task put its messages in the task's own queue
(per key on Redis, ``core/broker_keys.py``), where workers take whole
batches. The
messages are the same bytes taskiq would send; only where they go
changes. A message for another queue (a ``queue_name`` label) goes the
plain way, as does everything without the switch.
"""

import weakref
from typing import Any

from pydantic import TypeAdapter
from taskiq import AsyncBroker, AsyncTaskiqTask, TaskiqMessage
from taskiq.exceptions import SendTaskError
from taskiq.kicker import AsyncKicker
from taskiq.utils import maybe_awaitable

from taskiq_batching._compat import overrides, prepare_message
from taskiq_batching.core.broker_keys import broker_key
from taskiq_batching.errors import SendManyError
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports import BatchSender, Sender, sender_for

#: The JSON form of a message's arguments, as taskiq's formatter writes it.
_JSON_ARGS = TypeAdapter(list[Any], config=TaskiqMessage.model_config)
_JSON_KWARGS = TypeAdapter(dict[str, Any], config=TaskiqMessage.model_config)

#: The sender each broker's producer sends with (made once per broker,
#: shut down with the broker: ``BatchingMiddleware.shutdown``).
_senders: "weakref.WeakKeyDictionary[AsyncBroker, Sender]" = weakref.WeakKeyDictionary()


def opted_in(broker: AsyncBroker) -> bool:
    """Whether the broker's ``BatchingMiddleware`` says ``wait_in_broker=True``.

    :param broker: the broker.
    :return: True only for an explicit True (None is the default).
    """
    return any(
        getattr(middleware, "wait_in_broker", None) is True
        for middleware in broker.middlewares
    )


def sender(broker: AsyncBroker) -> Sender:
    """The sender a producer sends with (``transports.sender_for``).

    :param broker: the broker.
    :return: its sender (made once, with its middleware's choice).
    """
    found = _senders.get(broker)
    if found is None:
        choice = True if opted_in(broker) else None
        found = _senders[broker] = sender_for(broker, wait_in_broker=choice)
    return found


def drop_sender(broker: AsyncBroker) -> Sender | None:
    """Forget the broker's sender (it shuts down); the next send makes another.

    :param broker: the broker.
    :return: its sender, if one was made.
    """
    return _senders.pop(broker, None)


def waiting_sender(broker: AsyncBroker, spec: BatchSpec | None) -> BatchSender | None:
    """Where a batched task's messages wait in this broker, if they do.

    :param broker: the broker.
    :param spec: the task's spec (None: not a batched task).
    :return: the sender's ``batch_sender``, or None (send the plain way).
    """
    if spec is None or not opted_in(broker):
        return None
    found = sender(broker).batch_sender
    return found if found is not None and found.serves(spec) else None


def routed(broker: AsyncBroker, labels: dict[str, Any]) -> bool:
    """Whether a message with these labels goes to the broker's own queue.

    :param broker: the broker.
    :param labels: the message's labels.
    :return: False when a ``queue_name`` label sends it elsewhere.
    """
    queue = labels.get("queue_name")
    return not queue or queue == getattr(broker, "queue_name", None)


def key_of(spec: BatchSpec, item: Any, args_after: Any, kwargs: Any) -> str:
    """A message's ``broker_key`` from its arguments as the producer has them.

    :param spec: the task.
    :param item: its item (``batch_key`` is called with it).
    :param args_after: its arguments after the item, as prepared by taskiq.
    :param kwargs: its keyword arguments, as prepared by taskiq.
    :return: the key.
    """
    return broker_key(
        _JSON_ARGS.dump_python(list(args_after), mode="json"),
        _JSON_KWARGS.dump_python(dict(kwargs), mode="json"),
        spec.settings.key,
        item,
    )


async def kiq_waiting(
    kicker: AsyncKicker[Any, Any],
    source: BatchSender,
    spec: BatchSpec,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> AsyncTaskiqTask[Any]:
    """``kiq`` of one item of a batched task, to where it waits.

    The message is built and passed through the ``pre_send`` and
    ``post_send`` middlewares as taskiq's ``kiq`` does.

    :param kicker: the task's kicker.
    :param source: where it waits.
    :param spec: the task.
    :param args: the item, then further arguments.
    :param kwargs: keyword arguments.
    :raises SendTaskError: when the broker cannot take it.
    :return: the taskiq task.
    """
    broker = kicker.broker
    message = prepare_message(kicker, *args, **kwargs)
    for middleware in broker.middlewares:
        if overrides(middleware, "pre_send"):
            message = await maybe_awaitable(middleware.pre_send(message))
    encoded = broker.formatter.dumps(message)
    try:
        if routed(broker, message.labels):
            item = args[0] if args else None
            key = key_of(spec, item, message.args[1:], message.kwargs)
            await source.send(spec, [encoded], [key], once=False)
        else:
            await broker.kick(encoded)
    except SendManyError:
        raise
    except Exception as exc:
        raise SendTaskError from exc
    for middleware in reversed(broker.middlewares):
        if overrides(middleware, "post_send"):
            await maybe_awaitable(middleware.post_send(message))
    return AsyncTaskiqTask(
        task_id=message.task_id,
        result_backend=broker.result_backend,
        return_type=kicker.return_type,
    )
