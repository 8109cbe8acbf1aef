"""nats-py's internals (the NATS JetStream transport).

Tested with nats-py 2.16 here; ``.ci/matrix``'s lowest rows run the same
tests on nats-py 2.3 (``pyproject.toml`` bounds: ``nats-py>=2.3,<3``).
"""

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger("taskiq_batching")


def nats_pull_subject(subscription: Any) -> str:
    """The subject a JetStream pull subscription sends its pull requests to.

    The worker sends its own requests there, to the durable taskiq-nats
    created.

    Relies on: ``JetStreamContext.pull_subscribe`` keeping that subject
    (``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``, under the context's
    API prefix or domain) on the subscription as ``_nms``.

    :param subscription: a ``JetStreamContext.PullSubscription``.
    :return: the subject.
    """
    return str(subscription._nms)


async def nats_publish_each(
    client: Any, subjects: Sequence[str], payload: bytes
) -> bool:
    """Publish one small payload to many subjects, handed to the client at once.

    For the acks of a batch (``+ACK`` to each message's reply subject),
    the commands are built here and handed over in one call, counted in
    ``stats`` as ``publish`` counts them.

    Relies on: ``Client.publish`` building one ``PUB`` command per call
    and passing it to the private ``Client._send_command``, which appends
    it to the buffer its flusher writes (``flush`` writes it too); and on
    the ``out_msgs``/``out_bytes`` counters of ``Client.stats``.

    :param client: a connected ``nats.aio.client.Client``.
    :param subjects: where to publish (reply subjects the server gave).
    :param payload: what to publish to each.
    :return: False when that is not possible (not connected, another
        client): then publish each.
    """
    send = getattr(client, "_send_command", None)
    if send is None or not client.is_connected or not subjects:
        return False
    size = len(payload)
    head = b" %d\r\n%s\r\n" % (size, payload)
    await send(b"".join(b"PUB " + subject.encode() + head for subject in subjects))
    client.stats["out_msgs"] += len(subjects)
    client.stats["out_bytes"] += size * len(subjects)
    return True


class _HandOver(asyncio.Queue[Any]):
    """A subscription's pending queue that hands each message over as it comes.

    :param handle: called with each message, in the client's reading task.
    :param subscription: the subscription it replaces the queue of.
    """

    def __init__(self, handle: Callable[[Any], None], subscription: Any) -> None:
        super().__init__()
        self._handle = handle
        self._subscription = subscription

    def put_nowait(self, item: Any) -> None:
        """Hand the message over now (nothing stays pending in between)."""
        self._subscription._pending_size = 0
        try:
            self._handle(item)
        except Exception:
            # Raised into the client's reading task, it would end it.
            logger.exception("taskiq_batching: a NATS message could not be taken")


async def nats_subscribe_direct(
    client: Any, subject: str, handle: Callable[[Any], None]
) -> Any:
    """Subscribe; each message is handed to ``handle`` as the client parses it.

    A callback subscription puts each message on an ``asyncio.Queue`` that
    a task of its own reads, then awaits the callback: a queue round and a
    coroutine per message. Here ``handle`` (synchronous, must not block)
    is called where the message is put instead.

    Relies on: ``Client.subscribe`` with a callback starting
    ``Subscription._wait_for_msgs_task``, which reads
    ``Subscription._pending_queue``, filled by ``Client._process_msg`` with
    ``put_nowait`` (after adding the message's size to ``_pending_size``,
    which the task subtracts). Anything else (another client, a message
    already queued): the callback subscription as it is, calling ``handle``.

    :param client: a connected ``nats.aio.client.Client``.
    :param subject: what to subscribe to.
    :param handle: called with each ``Msg``.
    :return: the subscription (``unsubscribe`` as usual).
    """

    async def callback(message: Any) -> None:
        handle(message)

    subscription = await client.subscribe(subject, cb=callback)
    queue = getattr(subscription, "_pending_queue", None)
    task = getattr(subscription, "_wait_for_msgs_task", None)
    if (
        type(queue) is asyncio.Queue
        and queue.empty()
        and isinstance(task, asyncio.Task)
        and hasattr(subscription, "_pending_size")
    ):
        subscription._pending_queue = _HandOver(handle, subscription)
        task.cancel()
    return subscription
