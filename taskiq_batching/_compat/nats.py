"""nats-py's internals (the NATS JetStream transport).

Tested with nats-py 2.16 here; ``.ci/matrix``'s lowest rows run the same
tests on nats-py 2.3 (``pyproject.toml`` bounds: ``nats-py>=2.3,<3``).
"""

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Generator, Sequence
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
    if payload.isascii():  # a verdict: one join, encoded once
        tail = f" {size}\r\n{payload.decode('ascii')}\r\n"
        commands = ("PUB " + (tail + "PUB ").join(subjects) + tail).encode()
    else:
        head = b" %d\r\n%s\r\n" % (size, payload)
        commands = b"".join(b"PUB " + subject.encode() + head for subject in subjects)
    await send(commands)
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


#: The parameters of ``Client._process_msg`` that ``_Bare`` stands in for.
_PROCESS_MSG = ["sid", "subject", "reply", "data", "headers"]


class _Bare:
    """A client's ``_process_msg`` that hands some messages over raw.

    A message without headers of a subscription in ``handles`` goes to its
    handle as parsed: no ``Msg`` built, no subject decoded.

    :param client: the client whose parser calls it.
    :param process: the client's own ``_process_msg`` (everything else).
    """

    def __init__(self, client: Any, process: Callable[..., Any]) -> None:
        self.client = client
        self.process = process
        #: Subscription id -> (its subscription, its handle).
        self.handles: dict[int, tuple[Any, Callable[[bytes, bytes], None]]] = {}

    def __call__(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: Any
    ) -> Awaitable[None]:
        """A message parsed: to its raw handle, or as the client handles it.

        Not a coroutine function: the parser awaits what it returns, and a
        raw message gets ``_DONE``, no coroutine made for it (one per message).
        """
        entry = self.handles.get(sid)
        if entry is not None and not headers:
            client = self.client
            subscription, handle = entry
            if client._subs.get(sid) is subscription and not subscription._max_msgs:
                stats = client.stats
                stats["in_msgs"] += 1
                stats["in_bytes"] += len(data)
                subscription._received += 1
                try:
                    handle(reply, data)
                except Exception:
                    # Raised into the client's reading task, it would end it.
                    logger.exception(
                        "taskiq_batching: a NATS message could not be taken"
                    )
                return _DONE
            # Unsubscribed, or to end after some messages: as the client does.
            del self.handles[sid]
        return self.process(sid, subject, reply, data, headers)  # type: ignore[no-any-return]


class _Done:
    """Awaited, it is done at once (``None``): no coroutine, nothing made.

    Its ``__await__`` gives the same exhausted iterator each time: it
    stops at once (``StopIteration``, value None), however often it is
    iterated.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return _EXHAUSTED  # type: ignore[return-value]


#: An iterator with nothing in it: every ``next`` stops.
_EXHAUSTED = iter(())
_DONE = _Done()


def _bare_of(client: Any) -> _Bare | None:
    """The client's ``_Bare`` (put in place at the first call), or None."""
    current = getattr(client, "_process_msg", None)
    if isinstance(current, _Bare):
        return current
    if not (
        inspect.iscoroutinefunction(current)
        and list(inspect.signature(current).parameters) == _PROCESS_MSG
        and isinstance(getattr(client, "_subs", None), dict)
        and isinstance(getattr(client, "stats", None), dict)
    ):
        return None
    bare = _Bare(client, current)
    client._process_msg = bare
    return bare


async def nats_subscribe_direct(
    client: Any,
    subject: str,
    handle: Callable[[Any], None],
    handle_bare: Callable[[bytes, bytes], None] | None = None,
) -> Any:
    """Subscribe; each message is handed to ``handle`` as the client parses it.

    A callback subscription puts each message on an ``asyncio.Queue`` that
    a task of its own reads, then awaits the callback: a queue round and a
    coroutine per message. Here ``handle`` (synchronous, must not block)
    is called where the message is put instead.

    With ``handle_bare``, a message without headers goes to it as the raw
    reply subject and payload, before the client builds its ``Msg`` (a
    JetStream pull's messages: the status ones have headers). Relies on:
    the client's parser calling ``Client._process_msg(sid, subject,
    reply, data, headers)`` on the instance (replaced by a ``_Bare`` that
    calls the original for everything else), ``Client._subs`` (sid to
    subscription; a subscription gone from it is not served raw) and the
    ``in_msgs``/``in_bytes`` counters of ``Client.stats`` and
    ``Subscription._received``, kept as ``_process_msg`` keeps them (with
    ``Subscription._max_msgs``, an ``unsubscribe(limit)``: not raw).

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
        if handle_bare is not None:
            _serve_bare(client, subscription, handle_bare)
    return subscription


def _serve_bare(
    client: Any, subscription: Any, handle: Callable[[bytes, bytes], None]
) -> None:
    """Hand the subscription's messages without headers to ``handle``, if it can."""
    if all(
        isinstance(getattr(subscription, name, None), int)
        for name in ("_id", "_received", "_max_msgs")
    ):
        bare = _bare_of(client)
        if bare is not None:
            # Entries of subscriptions gone since go (each holds its reader).
            handles = bare.handles
            for sid in [
                sid for sid, entry in handles.items() if not _live(client, sid, entry)
            ]:
                del handles[sid]
            handles[subscription._id] = (subscription, handle)


def _live(client: Any, sid: int, entry: tuple[Any, Any]) -> bool:
    """Whether a raw handle's subscription is still the client's."""
    return client._subs.get(sid) is entry[0]
