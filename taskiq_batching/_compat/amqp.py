"""taskiq-aio-pika's, aio-pika's and aiormq's internals (the AMQP transport).

Tested with taskiq-aio-pika 0.6.1, aio-pika 10.2 and aiormq 7.2 here;
``.ci/matrix``'s lowest rows run the same tests on aio-pika 9.1 and
aiormq 6.7.5 (``pyproject.toml`` bounds: ``taskiq-aio-pika>=0.6,<0.7``,
``aio-pika>=9.1,<11``, ``aiormq>=6.7.5,<8``).
"""

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Any


def amqp_prefetch(broker: Any) -> int | None:
    """The AMQP prefetch count (``qos``) of a taskiq-aio-pika broker.

    Relies on: ``AioPikaBroker.__init__`` keeping its ``qos`` argument as
    ``self._qos``, the prefetch count its ``listen()`` sets on the read
    channel.

    :param broker: an ``AioPikaBroker``.
    :return: its prefetch count, or None when it has none.
    """
    qos = getattr(broker, "_qos", None)
    if isinstance(qos, int) and not isinstance(qos, bool) and qos > 0:
        return qos
    return None


async def amqp_declare_queues(broker: Any, channel: Any) -> list[tuple[Any, Any]]:
    """Declare a taskiq-aio-pika broker's queues as its ``listen()`` does.

    Relies on: ``AioPikaBroker.listen`` declaring (and binding) the
    dead-letter queue, its task queues and its delay queue with the private
    ``self._declare_queues(read_channel)``, and consuming the ``(queue,
    consumer keyword arguments)`` pairs it returns.

    :param broker: an ``AioPikaBroker``.
    :param channel: the channel to declare them on (its ``read_channel``).
    :return: ``(aio-pika queue, consumer keyword arguments)`` pairs.
    """
    declared: list[tuple[Any, Any]] = await broker._declare_queues(channel)
    return declared


def amqp_delay_queue_name(broker: Any) -> str | None:
    """The name of a taskiq-aio-pika broker's delay queue, if it has one.

    ``AioPikaBroker.listen`` consumes every declared queue but the delay
    queue: its messages are dead-lettered to the task queues when they
    expire.

    Relies on: the broker keeping that queue (a taskiq-aio-pika ``Queue``,
    or None) as ``self._delay_queue``.

    :param broker: an ``AioPikaBroker``.
    :return: its name, or None.
    """
    queue = getattr(broker, "_delay_queue", None)
    return None if queue is None else str(queue.name)


def amqp_priority_label(broker: Any) -> str:
    """The label taskiq-aio-pika's ``kick`` reads a message's priority from.

    :param broker: an ``AioPikaBroker``.
    :return: its ``label_for_priority`` (kept private by the broker).
    """
    label = getattr(broker, "_label_for_priority", None)
    return label if isinstance(label, str) else "priority"


def amqp_take_deliveries(channel: Any, consumer_tag: str, callback: Any) -> bool:
    """Have aiormq hand a consumer's deliveries to ``callback`` directly.

    The consumer stays aio-pika's: a ``RobustQueue`` registers it again
    (with its wrapper) after a reconnection.

    Relies on: aio-pika's ``Queue.consume`` registering, in aiormq's
    ``Channel.consumers[consumer_tag]`` (a plain dict), a wrapper that
    builds an ``IncomingMessage`` and starts one more task per delivery;
    aiormq calling that entry with each ``DeliveredMessage``, in its own
    task. Replacing the entry skips the wrapper.

    :param channel: the aiormq channel the consumer is on.
    :param consumer_tag: the consumer.
    :param callback: an async function of one ``DeliveredMessage``.
    :return: whether the consumer was found and replaced.
    """
    consumers = getattr(channel, "consumers", None)
    if not isinstance(consumers, dict) or consumer_tag not in consumers:
        return False
    consumers[consumer_tag] = callback
    return True


def amqp_tap_frames(channel: Any, take: Callable[[Any], bool]) -> bool:
    """Show ``take`` each frame aiormq hands a channel, before it is queued.

    The queue's ``put`` is replaced, on this queue only, by one that
    queues only the frames ``take`` returns False for. Once per channel.

    Relies on: aiormq's connection reader handing a channel its frames
    with ``await channel.frames.put((weight, frame))``, ``frames`` being
    an ``asyncio.Queue`` the channel's own reader takes them from.

    :param channel: an aiormq channel.
    :param take: returns True for a frame it took.
    :return: whether the channel's frames are now shown to ``take``.
    """
    frames = getattr(channel, "frames", None)
    if not isinstance(frames, asyncio.Queue) or "put" in vars(frames):
        return False
    queue_put = frames.put

    async def put(item: tuple[int, Any]) -> None:
        if not take(item[1]):
            await queue_put(item)

    frames.put = put  # type: ignore[method-assign]
    return True


def amqp_queue_settings(broker: Any) -> dict[str, Any]:
    """How a taskiq-aio-pika broker declares its first task queue.

    A batched task's own queue (``transports/amqp_batches.py``) is declared
    like it: as durable, of the same type, with the same dead-lettering and
    priorities.

    Relies on: ``AioPikaBroker`` keeping its task queues (taskiq-aio-pika
    ``Queue``s; none: one ``Queue()`` is added at startup) as
    ``self._task_queues``, its dead-letter queue as
    ``self._dead_letter_queue``, and its priority label's name as
    ``self._label_for_priority``.

    :param broker: an ``AioPikaBroker``.
    :return: ``name``, ``durable``, ``arguments`` (the declaration's
        table) and ``priority_label``.
    """
    from taskiq_aio_pika import Queue

    queues = getattr(broker, "_task_queues", None) or [Queue()]
    queue = queues[0]
    dead = getattr(broker, "_dead_letter_queue", None) or Queue(
        name="taskiq.dead_letter"
    )
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead.routing_key or dead.name,
        "x-queue-type": queue.type.value,
    }
    if queue.max_priority is not None:
        arguments["x-max-priority"] = queue.max_priority
    return {
        "name": str(queue.name),
        "durable": bool(queue.durable),
        "arguments": arguments,
        "priority_label": str(getattr(broker, "_label_for_priority", "priority")),
    }


async def amqp_connect_like_reader(broker: Any) -> Any:
    """A robust connection made as a taskiq-aio-pika worker's read connection.

    Relies on: ``AioPikaBroker.startup`` making its ``read_conn`` with
    ``aio_pika.connect_robust(self.url, loop=self._loop,
    **self._conn_kwargs)``.

    :param broker: an ``AioPikaBroker``.
    :return: an aio-pika ``RobustConnection`` (same URL, loop and keyword
        arguments, so the same name and TLS settings).
    """
    from aio_pika import connect_robust

    kwargs = getattr(broker, "_conn_kwargs", None) or {}
    return await connect_robust(
        broker.url, loop=getattr(broker, "_loop", None), **kwargs
    )


def amqp_read_frames_with(channel: Any, make: Callable[[Any, Any], Any]) -> Any:
    """Have a channel's connection read its frames with ``make``'s reader.

    Once per connection: ``make(stream, channels)`` is called with the
    connection's ``asyncio.StreamReader`` and its channels by number, and
    the object it returns reads every frame from then on, with its
    ``get_frame`` (aiormq's frame receiver's own finishes the frame it is
    reading: the stream is then at a frame's start).

    Relies on: aiormq's ``Connection.connect`` creating a ``FrameReceiver``
    on the stream (``.reader``) and handing it to the connection's reader
    task (``_reader_task``, a ``TaskWrapper`` of the task running the
    coroutine ``__reader(frame_receiver)``), which iterates it, its
    ``__anext__`` calling ``self.get_frame()``, the only reader of the
    stream once connected; the receiver taking the stream only (aiormq 6's
    also takes a timeout, its check of a stuck connection: it is kept
    there; aiormq 7's connection checks the time of the last frame its
    reader got); ``Connection.channels`` a dict of the open channels by
    number; an aiormq ``Channel`` knowing its ``connection``.

    :param channel: an aiormq channel.
    :param make: builds the reader.
    :return: the connection's reader (``make``'s, built once), or None
        when aiormq's internals are not as described.
    """
    try:
        from aiormq.connection import FrameReceiver
    except ImportError:
        return None
    connection = getattr(channel, "connection", None)
    wrapper = getattr(connection, "_reader_task", None)
    task = getattr(wrapper, "task", wrapper)  # aiormq's TaskWrapper's task
    channels = getattr(connection, "channels", None)
    if (
        not isinstance(task, asyncio.Task)
        or task.done()
        or not isinstance(channels, dict)
    ):
        return None
    coroutine = task.get_coro()
    frame = getattr(coroutine, "cr_frame", None)
    receiver = None if frame is None else frame.f_locals.get("frame_receiver")
    code = getattr(getattr(FrameReceiver, "__anext__", None), "__code__", None)
    if type(receiver) is not FrameReceiver or "get_frame" not in getattr(
        code, "co_names", ()
    ):
        return None
    if list(inspect.signature(FrameReceiver).parameters) != ["reader"]:
        return None  # aiormq 6's receiver times each read out: kept
    current = vars(receiver).get("get_frame")
    if current is not None:
        return getattr(current, "__self__", None)
    stream = getattr(receiver, "reader", None)
    if not isinstance(stream, asyncio.StreamReader):
        return None
    reader = make(stream, channels)
    receiver.get_frame = reader.get_frame  # type: ignore[method-assign]
    return reader


async def amqp_publish_frames(
    channel: Any, frames: Sequence[bytes]
) -> "list[asyncio.Future[Any]] | None":
    """Write publishes encoded by hand in one piece; their confirmations.

    Does what aiormq's ``basic_publish`` does for each (a delivery tag, a
    confirmation future in ``confirmations``, the frames on the
    connection's write queue), once for the whole chunk, under the
    channel's lock: the publishes take consecutive tags and go out in one
    write.

    Relies on: aiormq's ``Channel`` with ``publisher_confirms``, its
    ``lock`` (an async context manager that raises if the channel is
    closed), ``delivery_tag`` (the last tag used), ``confirmations`` (tag
    -> future, resolved with ``Basic.Ack`` or failed by the channel's
    confirm and close handling), ``create_future()`` (failed when the
    channel closes) and ``write_queue`` (the connection's queue of aiormq
    ``ChannelFrame``); ``ChannelFrame(payload, should_close)``.

    :param channel: an aiormq channel.
    :param frames: each message's frames (``amqp_wire.publish_frames``).
    :return: a confirmation future per message, in order; None when the
        channel is not as described (publish with ``basic_publish``).
    """
    try:
        from aiormq.abc import ChannelFrame
    except ImportError:
        return None
    confirmations = getattr(channel, "confirmations", None)
    if (
        getattr(channel, "publisher_confirms", False) is not True
        or not isinstance(confirmations, dict)
        or not isinstance(getattr(channel, "delivery_tag", None), int)
        or not isinstance(getattr(channel, "write_queue", None), asyncio.Queue)
        or not hasattr(channel, "create_future")
        or "should_close" not in getattr(ChannelFrame, "__dataclass_fields__", {})
    ):
        return None
    async with channel.lock:
        futures = []
        for _ in frames:
            channel.delivery_tag += 1
            future = channel.create_future()
            confirmations[channel.delivery_tag] = future
            futures.append(future)
        payload = b"".join(frames)
        await channel.write_queue.put(ChannelFrame(payload=payload, should_close=False))
    return futures
