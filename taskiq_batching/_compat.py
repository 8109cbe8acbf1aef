"""Every place taskiq-batching relies on internals of taskiq or a broker library.

Nothing else in the package touches a private attribute (ruff's ``SLF``
rule is on everywhere but here). Each function says what it relies on;
``tests/test_compat.py`` checks each against the installed versions, and
``pyproject.toml`` bounds those versions.
"""

import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine, Sequence
from types import FrameType
from typing import Any

from taskiq import AsyncBroker, BrokerMessage, TaskiqMessage
from taskiq.abc.middleware import TaskiqMiddleware
from taskiq.kicker import AsyncKicker
from taskiq.receiver import Receiver

#: What a routed ``Receiver.callback`` returns (taskiq awaits it as a task).
Callback = Callable[..., Coroutine[Any, Any, None]]


def calling_receiver(depth: int = 2) -> Receiver | None:
    """The taskiq ``Receiver`` that called ``broker.listen()``, if any.

    taskiq 0.13's ``Receiver.prefetcher`` calls ``self.broker.listen()``:
    the Receiver is ``self`` in one of the frames just above. ``taskiq
    worker`` builds the Receiver itself and hands it to nobody, so this
    is the only way to learn its settings (``--ack-type``,
    ``--max-tasks-per-child``, ``--wait-tasks-timeout``...).

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


def route_callback(
    receiver: Receiver,
    route: Callable[[Any], Callable[[], Coroutine[Any, Any, None]] | None],
) -> None:
    """Let ``route`` take some deliveries before the Receiver's own callback.

    The Receiver starts ``self.callback(message=..., raise_err=False)`` in a
    task for every delivery (``InMemoryBroker.kick`` calls it too). An
    instance attribute shadows the method for this Receiver only. ``route``
    returns a coroutine factory for the deliveries it takes, None for the
    others, which reach the original callback exactly as before (a
    synchronous failure of it still raises synchronously).

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


def share_stop_budget(receiver: Receiver, seconds: float | None) -> None:
    """Make the Receiver wait for its own tasks at most ``seconds`` more.

    taskiq 0.13's runner reads ``wait_tasks_timeout`` when the prefetcher
    has finished, after it closed ``listen()``'s generator. The worker
    spends part of ``--wait-tasks-timeout`` finishing batches while that
    generator closes; what is left is the Receiver's, so that a stop
    takes ``--wait-tasks-timeout`` in all, not twice that.

    :param receiver: the Receiver.
    :param seconds: the budget left, or None for no bound.
    """
    receiver.wait_tasks_timeout = seconds


def overrides(middleware: TaskiqMiddleware, hook: str) -> bool:
    """Whether a middleware implements a hook, by taskiq's own test.

    taskiq calls a hook only when the middleware's class overrides it
    (``middleware.__class__.pre_execute != TaskiqMiddleware.pre_execute``).

    :param middleware: a middleware.
    :param hook: a hook name (``pre_execute``, ``post_save``...).
    :return: whether taskiq would call it.
    """
    return bool(getattr(type(middleware), hook) != getattr(TaskiqMiddleware, hook))


def prepare_message(
    kicker: AsyncKicker[Any, Any], *args: Any, **kwargs: Any
) -> TaskiqMessage:
    """The message ``kicker.kiq(*args, **kwargs)`` would send.

    :param kicker: a kicker.
    :param args: positional arguments.
    :param kwargs: keyword arguments.
    :return: the message (new task_id, labels, prepared arguments).
    """
    return kicker._prepare_message(*args, **kwargs)


def prepare_arg(kicker: AsyncKicker[Any, Any], value: Any) -> Any:
    """An argument as ``kiq`` puts it in a message (pydantic models dumped).

    :param kicker: a kicker.
    :param value: the argument.
    :return: the prepared argument.
    """
    return kicker._prepare_arg(value)


def redis_result_key(backend: Any, task_id: str) -> str:
    """The key under which taskiq-redis's result backends store a result.

    :param backend: a taskiq-redis result backend.
    :param task_id: a task_id.
    :return: its key (with the backend's ``prefix_str``).
    """
    return str(backend._task_name(task_id))


def amqp_prefetch(broker: Any) -> int | None:
    """The AMQP prefetch count (``qos``) of a taskiq-aio-pika broker.

    :param broker: an ``AioPikaBroker``.
    :return: its prefetch count, or None when it has none.
    """
    qos = getattr(broker, "_qos", None)
    if isinstance(qos, int) and not isinstance(qos, bool) and qos > 0:
        return qos
    return None


def otel_tracer(middleware: Any) -> Any:
    """The tracer of taskiq's ``OpenTelemetryMiddleware``.

    It is made from the tracer provider the user gave the middleware (or
    the global one); batch spans use the same, so they land where the
    messages' spans do.

    :param middleware: an ``OpenTelemetryMiddleware``.
    :return: its ``opentelemetry.trace.Tracer``.
    """
    return middleware._tracer


def guard_declarations(check: Callable[[AsyncBroker, Any], None]) -> None:
    """Run ``check(broker, task)`` on every task any broker registers.

    ``AsyncBroker.task`` and ``register_task`` both register through
    ``AsyncBroker._register_task``: wrapping it once is how a batched task
    declared on a broker without ``BatchingMiddleware`` fails when it is
    declared instead of at run time. Installed once per process.

    :param check: raises to refuse a declaration.
    """
    registered = AsyncBroker._register_task
    if getattr(registered, "_taskiq_batching_guard", False):
        return

    @functools.wraps(registered)
    def register(self: AsyncBroker, task_name: str, task: Any) -> None:
        check(self, task)
        registered(self, task_name, task)

    register._taskiq_batching_guard = True  # type: ignore[attr-defined]
    AsyncBroker._register_task = register  # type: ignore[method-assign]


def broker_message(
    task_id: str, task_name: str, payload: bytes, labels: dict[str, Any]
) -> BrokerMessage:
    """A ``BrokerMessage`` without validating its fields again.

    :param task_id: its task_id.
    :param task_name: its task name.
    :param payload: the encoded message.
    :param labels: its labels.
    :return: the message.
    """
    return BrokerMessage.model_construct(
        task_id=task_id, task_name=task_name, message=payload, labels=labels
    )


def nats_pull_subject(subscription: Any) -> str:
    """The subject a JetStream pull subscription sends its pull requests to.

    nats-py 2.x's ``JetStreamContext.pull_subscribe`` keeps it as
    ``_nms`` (``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``, under the
    context's API prefix or domain): the worker sends its own requests
    there, the durable taskiq-nats created.

    :param subscription: a ``JetStreamContext.PullSubscription``.
    :return: the subject.
    """
    return str(subscription._nms)


async def nats_publish_each(
    client: Any, subjects: Sequence[str], payload: bytes
) -> bool:
    """Publish one small payload to many subjects, handed to the client at once.

    nats-py 2.x's ``Client.publish`` builds one ``PUB`` command per call
    and passes it to ``Client._send_command``, which appends it to the
    buffer its flusher writes (``flush`` writes it too). For the acks of a
    batch (``+ACK`` to each message's reply subject), the commands are
    built here and handed over in one call, counted in ``stats`` as
    ``publish`` counts them.

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


async def amqp_declare_queues(broker: Any, channel: Any) -> list[tuple[Any, Any]]:
    """Declare a taskiq-aio-pika broker's queues as its ``listen()`` does.

    taskiq-aio-pika 0.6's ``AioPikaBroker.listen`` declares (and binds) the
    dead-letter queue, its task queues and its delay queue with
    ``self._declare_queues(read_channel)`` and consumes what it returns.

    :param broker: an ``AioPikaBroker``.
    :param channel: the channel to declare them on (its ``read_channel``).
    :return: ``(aio-pika queue, consumer keyword arguments)`` pairs.
    """
    declared: list[tuple[Any, Any]] = await broker._declare_queues(channel)
    return declared


def amqp_delay_queue_name(broker: Any) -> str | None:
    """The name of a taskiq-aio-pika broker's delay queue, if it has one.

    ``AioPikaBroker.listen`` consumes every declared queue but the delay
    queue (``self._delay_queue``): its messages are dead-lettered to the
    task queues when they expire.

    :param broker: an ``AioPikaBroker``.
    :return: its name, or None.
    """
    queue = getattr(broker, "_delay_queue", None)
    return None if queue is None else str(queue.name)


def amqp_take_deliveries(channel: Any, consumer_tag: str, callback: Any) -> bool:
    """Have aiormq hand a consumer's deliveries to ``callback`` directly.

    aio-pika 10's ``Queue.consume`` registers, in aiormq 7's
    ``Channel.consumers[consumer_tag]``, a wrapper that builds an
    ``IncomingMessage`` and starts one more task per delivery. Replacing
    that entry gives ``callback`` aiormq's ``DeliveredMessage`` in aiormq's
    own task. The consumer stays aio-pika's: a ``RobustQueue`` registers
    it again (with its wrapper) after a reconnection.

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

    aiormq 7's connection reader hands a channel its frames with
    ``await channel.frames.put((weight, frame))`` (``frames`` is an
    ``asyncio.Queue`` that the channel's reader takes them from). The
    queue's ``put`` is replaced, on this queue only, by one that queues
    only the frames ``take`` returns False for. Once per channel.

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
