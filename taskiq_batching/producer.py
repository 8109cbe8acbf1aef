"""Sending many items at once: ``await task.kiq_many(items)``.

Each item is still its own ordinary taskiq message (own task_id, labels,
``pre_send``/``post_send`` middlewares), exactly as ``kiq`` builds it;
only the sending is pipelined (see ``bulk.kick_many``).
"""

from collections.abc import Iterable
from typing import Any

from taskiq import AsyncTaskiqTask, TaskiqMessage
from taskiq.exceptions import SendTaskError
from taskiq.kicker import AsyncKicker
from taskiq.utils import maybe_awaitable

from taskiq_batching.bulk import kick_many
from taskiq_batching.direct import implementing


async def send_many(
    kicker: AsyncKicker[Any, Any],
    items: Iterable[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> list[AsyncTaskiqTask[Any]]:
    """Send one message per item, pipelined.

    :param kicker: a fresh kicker of the task (labels set as wanted).
    :param items: the items, one message each.
    :param args: arguments after the item, the same for every message.
    :param kwargs: keyword arguments, the same for every message.
    :raises SendTaskError: when the broker cannot take them.
    :return: one taskiq task per item, in order.
    """
    broker = kicker.broker
    pre_send = implementing(broker, "pre_send")
    messages: list[TaskiqMessage] = []
    template: TaskiqMessage | None = None
    for item in items:
        if template is None:
            # What ``kicker.kiq(item, ...)`` would build; the others differ
            # from it only by their task_id and item. Middlewares get copies.
            template = kicker._prepare_message(item, *args, **kwargs)
            task_id, arg = template.task_id, template.args[0]
        else:
            task_id, arg = broker.id_generator(), kicker._prepare_arg(item)
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
        messages.append(message)
    try:
        await kick_many(broker, [broker.formatter.dumps(m) for m in messages])
    except Exception as exc:
        raise SendTaskError from exc
    post_send = list(reversed(implementing(broker, "post_send")))
    for message in messages:
        for middleware in post_send:
            await maybe_awaitable(middleware.post_send(message))
    return [
        AsyncTaskiqTask(
            task_id=message.task_id,
            result_backend=broker.result_backend,
            return_type=kicker.return_type,
        )
        for message in messages
    ]
