"""Sending many items at once: ``await task.kiq_many(items)``.

Each item is still its own ordinary taskiq message (own task_id, labels,
``pre_send``/``post_send`` middlewares), exactly as ``kiq`` builds it;
only the sending is pipelined (the broker's ``Sender.send``).

When no middleware implements ``pre_send`` or ``post_send`` and the broker
uses taskiq's default formatter, the messages are encoded without a
``TaskiqMessage`` each: the first item's message (built by taskiq, as
``kiq`` does) is dumped once, and each further message is that dump with
its own task_id and item, the items converted by one pydantic call with
the message model's own settings. ``tests/unit/test_producer.py`` checks
that the bytes equal ``formatter.dumps`` of what ``kiq`` builds.
"""

import datetime
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import TypeAdapter
from taskiq import (
    AsyncBroker,
    AsyncTaskiqTask,
    BrokerMessage,
    TaskiqMessage,
    TaskiqMiddleware,
)
from taskiq.exceptions import SendTaskError
from taskiq.formatters.proxy_formatter import ProxyFormatter
from taskiq.kicker import AsyncKicker
from taskiq.utils import maybe_awaitable

from taskiq_batching._compat import (
    broker_message,
    overrides,
    prepare_arg,
    prepare_message,
)
from taskiq_batching.errors import BatchConfigError, SendManyError
from taskiq_batching.labels import wire_labels
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports import SENT_AT_LABEL, Sender, stamps_sent_at
from taskiq_batching.waiting import key_of, routed, sender, waiting_sender

#: Turns prepared arguments into what ``TaskiqMessage.model_dump(mode="json")``
#: gives for them: the same field type, the same model settings.
_ARGS = TypeAdapter(list[Any], config=TaskiqMessage.model_config)


def _implementing(broker: AsyncBroker, hook: str) -> list[TaskiqMiddleware]:
    return [m for m in broker.middlewares if overrides(m, hook)]


def _sender(broker: AsyncBroker) -> Sender:
    return sender(broker)


async def send_many(
    kicker: AsyncKicker[Any, Any],
    items: Iterable[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> list[AsyncTaskiqTask[Any]]:
    """Send one message per item, pipelined.

    :param kicker: a fresh kicker of the task (labels set as wanted); the
        task's settings (``batch``, ``batch_*``) are left out of its labels.
    :param items: the items, one message each.
    :param args: arguments after the item, the same for every message.
    :param kwargs: keyword arguments, the same for every message.
    :raises SendManyError: when some could not be sent: it says which (a
        ``SendTaskError``; no message is ever sent twice).
    :raises SendTaskError: when the broker cannot take them.
    :return: one taskiq task per item, in order.
    """
    broker = kicker.broker
    items = list(items)
    if not items:
        return []
    # A batched task's kicker already leaves its settings out; any other
    # kicker given here must not put them on the wire either.
    kicker.labels = wire_labels(kicker.labels)
    if stamps_sent_at(broker):
        # Sent together: one send time (the batch_timeout counts from it).
        kicker.labels[SENT_AT_LABEL] = time.time()
    # What ``kicker.kiq(item, ...)`` would build for the first item; the
    # others differ from it only by their task_id and item.
    template = prepare_message(kicker, items[0], *args, **kwargs)
    pre_send = _implementing(broker, "pre_send")
    post_send = list(reversed(_implementing(broker, "post_send")))
    if pre_send or post_send or type(broker.formatter) is not ProxyFormatter:
        messages = [
            await _message(template, index, item, kicker, pre_send)
            for index, item in enumerate(items)
        ]
        task_ids = [message.task_id for message in messages]
        encoded = [broker.formatter.dumps(message) for message in messages]
    else:
        messages = []
        task_ids, encoded = _encode(broker, template, items[1:], kicker)
    try:
        await _send(kicker, template, items, messages, encoded)
    except SendManyError:
        raise  # says which messages were not sent (none was sent twice)
    except Exception as exc:
        raise SendTaskError from exc
    for message in messages:
        for middleware in post_send:
            await maybe_awaitable(middleware.post_send(message))
    return [
        AsyncTaskiqTask(
            task_id=task_id,
            result_backend=broker.result_backend,
            return_type=kicker.return_type,
        )
        for task_id in task_ids
    ]


async def _send(
    kicker: AsyncKicker[Any, Any],
    template: TaskiqMessage,
    items: list[Any],
    messages: list[TaskiqMessage],
    encoded: list[BrokerMessage],
) -> None:
    """Send the messages where the task's messages wait, or the plain way."""
    broker = kicker.broker
    spec: BatchSpec | None = getattr(kicker, "spec", None)
    source = waiting_sender(broker, spec)
    if spec is None or source is None or not routed(broker, template.labels):
        await _sender(broker).send(encoded)
        return
    if messages:  # built one by one: middlewares may have changed each
        keys = [
            key_of(spec, item, message.args[1:], message.kwargs)
            for item, message in zip(items, messages, strict=True)
        ]
    elif spec.settings.key is None:  # the same arguments after every item
        keys = [key_of(spec, None, template.args[1:], template.kwargs)] * len(items)
    else:
        keys = [
            key_of(spec, item, template.args[1:], template.kwargs) for item in items
        ]
    await source.send(spec, encoded, keys, once=True)


async def _message(
    template: TaskiqMessage,
    index: int,
    item: Any,
    kicker: AsyncKicker[Any, Any],
    pre_send: list[TaskiqMiddleware],
) -> TaskiqMessage:
    """The message of one item, a copy of the template (middlewares get copies)."""
    if index == 0:
        task_id, arg = template.task_id, template.args[0]
    else:
        task_id, arg = kicker.broker.id_generator(), prepare_arg(kicker, item)
    message = template.model_copy(
        update={
            "task_id": task_id,
            "labels": dict(template.labels),
            "args": [arg, *template.args[1:]],
            "kwargs": dict(template.kwargs),
        },
    )
    for middleware in pre_send:
        message = await maybe_awaitable(middleware.pre_send(message))
    return message


def _encode(
    broker: AsyncBroker,
    template: TaskiqMessage,
    rest: Sequence[Any],
    kicker: AsyncKicker[Any, Any],
) -> tuple[list[str], list[BrokerMessage]]:
    """Task ids and encoded messages: the template's, then one per further item."""
    dumped = template.model_dump(mode="json")
    dumpb = broker.serializer.dumpb
    after = dumped["args"][1:]
    task_ids = [template.task_id]
    payloads = [dumpb(dumped)]
    prepared = [prepare_arg(kicker, item) for item in rest]
    for item in _ARGS.dump_python(prepared, mode="json"):
        task_id = broker.id_generator()
        task_ids.append(task_id)
        payloads.append(dumpb({**dumped, "task_id": task_id, "args": [item, *after]}))
    encoded = [
        broker_message(task_id, template.task_name, payload, template.labels)
        for task_id, payload in zip(task_ids, payloads, strict=True)
    ]
    return task_ids, encoded


def deadline(within: float | datetime.timedelta | datetime.datetime) -> float:
    """A ``batch_deadline`` label: the time by which a message's batch should start.

    >>> await task.kicker().with_labels(batch_deadline=deadline(5)).kiq(item)

    :param within: seconds from now (or a timedelta), or an aware datetime.
    :raises BatchConfigError: for a naive datetime or a non-finite duration.
    :return: the deadline as a UNIX time in seconds.
    """
    if isinstance(within, datetime.datetime):
        if within.tzinfo is None:
            raise BatchConfigError(
                f"deadline: a datetime needs a time zone (aware), got {within!r}."
            )
        return within.timestamp()
    if isinstance(within, datetime.timedelta):
        within = within.total_seconds()
    if isinstance(within, bool) or not isinstance(within, (int, float)):
        raise BatchConfigError(
            f"deadline: give seconds, a timedelta or an aware datetime, got {within!r}."
        )
    if not math.isfinite(within):
        raise BatchConfigError(f"deadline: seconds must be finite, got {within!r}.")
    return time.time() + within
