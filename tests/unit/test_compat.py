"""Each internal of taskiq or a broker library ``_compat`` relies on, checked
against the installed versions (the CI matrix runs this on each supported one).
"""

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

import fakeredis
import pytest
from taskiq import (
    AckableMessage,
    AsyncBroker,
    InMemoryBroker,
    TaskiqMessage,
    TaskiqMiddleware,
    TaskiqResult,
)
from taskiq.abc.broker import AsyncBroker as BaseBroker
from taskiq.kicker import AsyncKicker
from taskiq.receiver import Receiver
from taskiq_redis import RedisAsyncResultBackend

from taskiq_batching import _compat
from tests.helpers import QueueBroker

pytestmark = pytest.mark.timeout(30)


async def test_calling_receiver_is_the_receiver_that_listens() -> None:
    found: list[Receiver | None] = []

    class Spy(QueueBroker):
        def listen(self) -> AsyncGenerator[bytes | AckableMessage, None]:
            found.append(_compat.calling_receiver(depth=2))
            return super().listen()

    broker = Spy()
    receiver = Receiver(broker, run_startup=False)
    finish = asyncio.Event()
    finish.set()
    await receiver.listen(finish)
    broker.listen()
    assert found == [receiver, None]


async def test_route_callback_takes_what_it_routes_and_passes_the_rest() -> None:
    broker = InMemoryBroker()
    routed: list[Any] = []
    passed: list[Any] = []

    async def original(message: Any, raise_err: bool = False) -> None:
        passed.append((message, raise_err))

    receiver = _compat.in_memory_receiver(broker)
    receiver.callback = original  # type: ignore[method-assign]

    async def taken(message: Any) -> None:
        routed.append(message)

    _compat.route_callback(
        receiver,
        lambda message: (lambda: taken(message)) if message == b"mine" else None,
    )
    await receiver.callback(message=b"mine")
    await receiver.callback(message=b"theirs", raise_err=True)
    assert routed == [b"mine"]
    assert passed == [(b"theirs", True)]


def test_route_callback_keeps_a_synchronous_failure_synchronous() -> None:
    receiver = Receiver(InMemoryBroker())

    def failing(**_: Any) -> None:
        raise RuntimeError("handoff failed")

    receiver.callback = failing  # type: ignore[method-assign, assignment]
    _compat.route_callback(receiver, lambda message: None)
    with pytest.raises(RuntimeError, match="handoff failed"):
        receiver.callback(message=b"x")  # type: ignore[unused-coroutine]


async def test_share_stop_budget_bounds_the_runners_wait() -> None:
    broker = QueueBroker()
    started = asyncio.Event()

    @broker.task
    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    receiver = Receiver(broker, run_startup=False)  # waits forever by default
    finish = asyncio.Event()
    listening = asyncio.create_task(receiver.listen(finish))
    await forever.kiq()
    await started.wait()
    _compat.share_stop_budget(receiver, 0.2)
    began = time.monotonic()
    finish.set()
    await asyncio.wait_for(listening, timeout=10)
    assert time.monotonic() - began >= 0.2


def test_overrides_is_taskiqs_own_test() -> None:
    class Pre(TaskiqMiddleware):
        def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
            return message

    class Saved(TaskiqMiddleware):
        def post_save(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
            pass

    assert _compat.overrides(Pre(), "pre_execute")
    assert not _compat.overrides(Pre(), "post_save")
    assert _compat.overrides(Saved(), "post_save")
    assert not _compat.overrides(TaskiqMiddleware(), "on_error")


async def test_prepare_message_is_what_kiq_sends() -> None:
    broker = QueueBroker()

    @broker.task(task_name="t", tenant="a")
    async def task(item: int, *, flag: bool = False) -> None: ...

    kicker: AsyncKicker[Any, Any] = task.kicker().with_task_id("fixed")
    prepared = _compat.prepare_message(kicker, 5, flag=True)
    await kicker.kiq(5, flag=True)
    sent = await broker.queue.get()
    assert broker.formatter.dumps(prepared).message == sent.message
    assert _compat.prepare_arg(kicker, 5) == 5


async def test_redis_result_key_is_where_the_backend_stores() -> None:
    server = fakeredis.FakeServer()
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        "redis://fake:6379/0",
        prefix_str="pre",
        connection_class=fakeredis.FakeAsyncRedisConnection,
        server=server,
    )
    await backend.set_result(
        "abc", TaskiqResult(is_err=False, log=None, return_value=1, execution_time=0)
    )
    key = _compat.redis_result_key(backend, "abc")
    client = fakeredis.FakeAsyncRedis(server=server)
    assert key == "pre:abc"
    assert _compat.redis_result_keys(backend, ["abc", "d"]) == [key, "pre:d"]
    assert await client.exists(key) == 1
    await client.aclose()


def test_redis_result_prefix_is_what_stock_keys_start_with() -> None:
    from taskiq_redis import (
        RedisAsyncClusterResultBackend,
        RedisAsyncSentinelResultBackend,
    )

    class Own(RedisAsyncResultBackend[Any]):
        def _task_name(self, task_id: str) -> str:
            return task_id + ":mine"

    url = "redis://nowhere:6379/0"
    for prefix in ("pre", None):
        backends: list[Any] = [
            RedisAsyncResultBackend(url, prefix_str=prefix),
            RedisAsyncSentinelResultBackend(
                [("nowhere", 26379)], "m", prefix_str=prefix
            ),
            RedisAsyncClusterResultBackend(url, prefix_str=prefix),
        ]
        for backend in backends:
            found = _compat.redis_result_prefix(backend)
            assert found == ("pre:" if prefix else "")
            assert _compat.redis_result_key(backend, "abc") == f"{found}abc"
    assert _compat.redis_result_prefix(Own(url, prefix_str="pre")) is None


def test_amqp_prefetch_is_the_brokers_qos() -> None:
    from taskiq_aio_pika import AioPikaBroker

    assert _compat.amqp_prefetch(AioPikaBroker("amqp://guest@nowhere/", qos=7)) == 7
    assert _compat.amqp_prefetch(QueueBroker()) is None


def test_otel_tracer_is_the_middlewares() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from taskiq.middlewares.opentelemetry_middleware import OpenTelemetryMiddleware

    tracer = TracerProvider().get_tracer("test")
    assert _compat.otel_tracer(OpenTelemetryMiddleware(tracer=tracer)) is tracer


def test_guard_declarations_wraps_registration_once() -> None:
    seen: list[str] = []
    registered = BaseBroker._register_task
    try:
        _compat.guard_declarations(lambda broker, task: seen.append(task.task_name))
        wrapped = BaseBroker._register_task
        _compat.guard_declarations(lambda broker, task: seen.append("twice"))
        assert BaseBroker._register_task is wrapped
    finally:
        BaseBroker._register_task = registered  # type: ignore[method-assign]
    # The package's own guard is installed on import, and stays.
    assert getattr(AsyncBroker._register_task, "_taskiq_batching_guard", False)


def test_amqp_queue_internals_are_the_brokers() -> None:
    import inspect

    import aiormq
    from taskiq_aio_pika import AioPikaBroker, Queue

    # What amqp_declare_queues calls, with the parameters it passes.
    declare = AioPikaBroker._declare_queues
    assert inspect.iscoroutinefunction(declare)
    assert list(inspect.signature(declare).parameters) == ["self", "channel"]
    assert _compat.amqp_delay_queue_name(AioPikaBroker("amqp://nowhere/")) is None
    delayed = AioPikaBroker("amqp://nowhere/", delay_queue=Queue(name="later"))
    assert _compat.amqp_delay_queue_name(delayed) == "later"
    # aiormq's channel keeps its consumer callbacks in a public dict.
    assert "self.consumers" in inspect.getsource(aiormq.Channel.__init__)


def test_amqp_queue_settings_are_the_first_task_queues() -> None:
    from taskiq_aio_pika import AioPikaBroker, Queue, QueueType

    broker = AioPikaBroker(
        "amqp://nowhere/",
        task_queues=[Queue(name="jobs", type=QueueType.CLASSIC, max_priority=5)],
        dead_letter_queue=Queue(name="dead"),
        label_for_priority="urgency",
    )
    assert _compat.amqp_queue_settings(broker) == {
        "name": "jobs",
        "durable": True,
        "arguments": {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dead",
            "x-queue-type": "classic",
            "x-max-priority": 5,
        },
        "priority_label": "urgency",
    }
    # No task queue given: taskiq-aio-pika adds ``Queue()`` at startup.
    assert _compat.amqp_queue_settings(AioPikaBroker("amqp://nowhere/"))["name"] == (
        Queue().name
    )


async def test_amqp_connect_like_reader_uses_the_read_connections_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import inspect

    import aio_pika
    from taskiq_aio_pika import AioPikaBroker

    broker = AioPikaBroker(
        "amqp://somewhere/", client_properties={"connection_name": "pod-1"}
    )
    made: list[tuple[Any, ...]] = []

    async def connect_robust(url: str, **kwargs: Any) -> str:
        made.append((url, kwargs))
        return "connection"

    monkeypatch.setattr(aio_pika, "connect_robust", connect_robust)
    assert await _compat.amqp_connect_like_reader(broker) == "connection"
    assert made == [
        (
            "amqp://somewhere/",
            {"loop": None, "client_properties": {"connection_name": "pod-1"}},
        )
    ]
    # The broker makes its read connection so.
    startup = inspect.getsource(AioPikaBroker.startup)
    assert "self.read_conn = await connect_robust(" in startup
    assert "**self._conn_kwargs" in startup


def test_amqp_take_deliveries_replaces_a_known_consumer_only() -> None:
    class Channel:
        def __init__(self) -> None:
            self.consumers: dict[str, object] = {"tag": "aio-pika's"}

    def callback() -> None: ...

    channel = Channel()
    assert _compat.amqp_take_deliveries(channel, "tag", callback)
    assert channel.consumers["tag"] is callback
    assert not _compat.amqp_take_deliveries(channel, "other", callback)
    assert "other" not in channel.consumers
    assert not _compat.amqp_take_deliveries(object(), "tag", callback)


# --- taskiq's AckController ------------------------------------------------


async def test_batched_messages_get_what_ack_controllers_set_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A taskiq whose AckController.__init__ sets up more state (as its PR
    # #640 adds ``_ack_progress``): batched messages' controllers have it too.
    from taskiq import TaskiqDepends
    from taskiq.acks import AckController

    from taskiq_batching import BatchInfo, batch_task
    from tests.helpers import queue_broker, running_worker

    taskiq_init = AckController.__init__

    def newer_init(self: AckController, *args: Any, **kwargs: Any) -> None:
        taskiq_init(self, *args, **kwargs)
        self._ack_progress = None  # type: ignore[attr-defined]

    monkeypatch.setattr(AckController, "__init__", newer_init)
    broker = queue_broker()
    seen: list[Any] = []

    @batch_task(broker, task_name="rows", batch_size=2)
    async def rows(items: list[int], batch: BatchInfo = TaskiqDepends()) -> int:
        seen.extend(ctx._ack_controller for ctx in batch.contexts)
        await batch.ack()
        return len(items)

    async with running_worker(broker):
        sent = [await rows.kiq(i) for i in range(2)]
        for task in sent:
            assert (await task.wait_result(timeout=10)).return_value == 2
    assert len(seen) == 2
    for controller in seen:
        assert isinstance(controller, AckController)
        assert getattr(controller, "_ack_progress", "missing") is None
        assert controller.is_ackable
        assert controller.is_acked
    assert sorted(broker.acked) == sorted(task.task_id for task in sent)


def test_ack_controller_takes_one_ack_callable() -> None:
    # What MessageAck passes to AckController.__init__: one ack callable;
    # anything else taskiq adds must be optional.
    import inspect

    from taskiq.acks import AckController

    params = list(inspect.signature(AckController.__init__).parameters.values())
    assert [p.name for p in params[:2]] == ["self", "ack"]
    assert all(p.default is not p.empty for p in params[2:])


# --- taskiq's worker side ---------------------------------------------------


async def test_shadow_listen_is_what_a_receiver_listens_to() -> None:
    broker = QueueBroker()
    other = QueueBroker()
    receiver = Receiver(broker, run_startup=False)  # built before: no matter
    calls: list[str] = []

    def listen() -> AsyncGenerator[bytes | AckableMessage, None]:
        calls.append("shadow")
        return original()

    original = _compat.shadow_listen(broker, listen)
    assert original == QueueBroker.listen.__get__(broker)
    finish = asyncio.Event()
    finish.set()
    await receiver.listen(finish)
    assert calls == ["shadow"]
    # This broker instance only.
    assert other.listen == QueueBroker.listen.__get__(other)
    assert type(broker).listen is QueueBroker.listen


def test_receiver_settings_are_what_it_was_built_with() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from taskiq.acks import AcknowledgeType

    broker = QueueBroker()
    with ThreadPoolExecutor(1) as executor:
        receiver = Receiver(
            broker,
            executor=executor,
            validate_params=False,
            propagate_exceptions=False,
            run_startup=False,
            ack_type=AcknowledgeType.WHEN_EXECUTED,
            max_tasks_to_execute=7,
            wait_tasks_timeout=2.5,
        )
        assert _compat.receiver_settings(receiver) == _compat.ReceiverSettings(
            ack_type=AcknowledgeType.WHEN_EXECUTED,
            max_tasks_to_execute=7,
            wait_tasks_timeout=2.5,
            validate_params=False,
            executor=executor,
            propagate_exceptions=False,
        )
    defaults = _compat.receiver_settings(Receiver(broker, run_startup=False))
    assert defaults.ack_type is AcknowledgeType.WHEN_SAVED
    assert defaults.max_tasks_to_execute is None
    assert defaults.wait_tasks_timeout is None
    assert defaults.validate_params
    assert defaults.executor is None


async def test_in_memory_receiver_is_what_kick_hands_messages_to() -> None:
    broker = InMemoryBroker()
    got: list[Any] = []

    async def callback(message: Any, raise_err: bool = False) -> None:
        got.append(message)

    receiver = _compat.in_memory_receiver(broker)
    assert isinstance(receiver, Receiver)
    receiver.callback = callback  # type: ignore[method-assign]

    @broker.task(task_name="t")
    async def task() -> None: ...

    await task.kiq()
    await broker.wait_all()
    assert len(got) == 1
    assert isinstance(got[0], bytes)


# --- declaring tasks ----------------------------------------------------------


def test_swap_task_class_is_what_broker_task_builds() -> None:
    from taskiq import AsyncTaskiqDecoratedTask

    built: list[list[str]] = []

    class Mine(AsyncTaskiqDecoratedTask[Any, Any]):
        def __init__(self, **kwargs: Any) -> None:
            built.append(sorted(kwargs))
            super().__init__(**kwargs)

    broker = QueueBroker()
    bases: list[type[Any]] = []

    def wrap(base: type[Any]) -> type[Any]:
        bases.append(base)
        return Mine

    _compat.swap_task_class(broker, wrap)

    @broker.task(task_name="t")
    async def task(item: int) -> int:
        return item

    assert bases == [AsyncTaskiqDecoratedTask]
    assert isinstance(task, Mine)
    assert built == [["broker", "labels", "original_func", "return_type", "task_name"]]
    assert broker.find_task("t") is task


def test_retype_task_takes_over_a_plain_task_only() -> None:
    from taskiq import AsyncTaskiqDecoratedTask

    broker = QueueBroker()

    @broker.task(task_name="t", tenant="a")
    async def task(item: int) -> int:
        return item

    class Unrelated:
        pass

    class Slotted(AsyncTaskiqDecoratedTask[Any, Any]):
        __slots__ = ("extra",)

    assert not _compat.retype_task(task, Unrelated)
    assert not _compat.retype_task(task, Slotted)
    assert not _compat.retype_task(object(), Slotted)  # type: ignore[arg-type]

    class More(AsyncTaskiqDecoratedTask[Any, Any]):
        def more(self) -> str:
            return self.task_name

    assert _compat.retype_task(task, More)
    assert isinstance(task, More)
    assert task.more() == "t"
    assert task.labels == {"tenant": "a"}
    assert task.broker is broker
    assert task.return_type is int


class WithoutTaskClass(QueueBroker):
    """A taskiq that builds tasks without ``decorator_class`` (its PR #618)."""

    @property
    def decorator_class(self) -> type[Any]:
        from taskiq import AsyncTaskiqDecoratedTask

        return AsyncTaskiqDecoratedTask

    @decorator_class.setter
    def decorator_class(self, value: type[Any]) -> None:
        pass  # the plugin's swap has no effect


async def test_a_batched_task_built_without_the_task_class_still_batches() -> None:
    from taskiq.brokers.inmemory_broker import InmemoryResultBackend

    from taskiq_batching import BatchingMiddleware, batch_task
    from taskiq_batching.tasks import BatchingDecoratedTask
    from tests.helpers import running_worker

    broker = WithoutTaskClass().with_middlewares(BatchingMiddleware())
    broker.with_result_backend(InmemoryResultBackend(max_stored_results=-1))
    sizes: list[int] = []

    @batch_task(broker, task_name="rows", batch_size=3)
    async def rows(items: list[int]) -> int:
        sizes.append(len(items))
        return sum(items)

    assert isinstance(rows.task, BatchingDecoratedTask)
    async with running_worker(broker):
        sent = [await rows.kiq(i) for i in (1, 2, 3)]
        for task in sent:
            assert (await task.wait_result(timeout=10)).return_value == 6
    assert sizes == [3]


async def test_a_batched_task_registered_around_the_guard_batches_on_a_worker() -> None:
    from taskiq import AsyncTaskiqDecoratedTask

    from taskiq_batching.tasks import BatchingDecoratedTask
    from tests.helpers import queue_broker, running_worker

    broker = queue_broker()
    sizes: list[int] = []

    async def rows(items: list[int]) -> int:
        sizes.append(len(items))
        return sum(items)

    # Straight into the registry: no guard of declarations sees it.
    task: AsyncTaskiqDecoratedTask[Any, Any] = AsyncTaskiqDecoratedTask(
        broker=broker,
        task_name="rows",
        original_func=rows,
        labels={"batch": True, "batch_size": 2},
    )
    broker.local_task_registry["rows"] = task
    async with running_worker(broker):
        sent = [await task.kiq(i) for i in (1, 2)]
        for one in sent:
            assert (await one.wait_result(timeout=10)).return_value == 3
    assert sizes == [2]
    assert isinstance(task, BatchingDecoratedTask)


def test_a_task_class_that_cannot_be_taken_over_fails_at_declaration() -> None:
    from taskiq_batching import BatchConfigError, BatchingMiddleware

    class Foreign:
        """A task class of another hierarchy, which the plugin cannot extend."""

        def __init__(self, **kwargs: Any) -> None:
            self.__dict__.update(kwargs)

    class ForeignBroker(WithoutTaskClass):
        @property
        def decorator_class(self) -> type[Any]:
            return Foreign

        @decorator_class.setter
        def decorator_class(self, value: type[Any]) -> None:
            pass

    broker = ForeignBroker().with_middlewares(BatchingMiddleware())
    with pytest.raises(BatchConfigError, match="cannot take over"):

        @broker.task(task_name="rows", batch=True, batch_size=2)
        async def rows(items: list[int]) -> int:
            return len(items)

    assert "rows" not in broker.local_task_registry


# --- OpenTelemetry ------------------------------------------------------------


def test_otel_message_span_is_the_one_pre_execute_opened() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from taskiq.middlewares.opentelemetry_middleware import OpenTelemetryMiddleware

    middleware = OpenTelemetryMiddleware(tracer=TracerProvider().get_tracer("t"))
    middleware.set_broker(InMemoryBroker())
    fresh = TaskiqMessage(task_id="1", task_name="t", labels={}, args=[], kwargs={})
    assert _compat.otel_message_span(fresh) is None
    message = middleware.pre_execute(fresh.model_copy(deep=True))
    span = _compat.otel_message_span(message)
    assert span is not None
    assert span.is_recording()
    assert span.name == "execute/t"
    middleware.post_execute(
        message, TaskiqResult(is_err=False, log=None, return_value=1, execution_time=0)
    )
    assert not span.is_recording()


# --- prometheus_client ----------------------------------------------------------

_PROMETHEUS_PROCESS = """
import os, sys
from prometheus_client import Gauge
from taskiq_batching import _compat
gauge = Gauge("live", "live", multiprocess_mode="livesum")
gauge.set(1)
print(_compat.prometheus_values_in_memory(), os.getpid())
"""


@pytest.mark.parametrize("multiprocess", [False, True])
def test_prometheus_value_class_and_live_gauge_files(
    multiprocess: bool, tmp_path: Any
) -> None:
    import os
    import subprocess
    import sys

    from prometheus_client.multiprocess import mark_process_dead

    env = {k: v for k, v in os.environ.items() if "multiproc_dir" not in k.lower()}
    if multiprocess:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", _PROMETHEUS_PROCESS],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    in_memory, pid = done.stdout.split()
    assert in_memory == str(not multiprocess)
    pids = _compat.prometheus_live_gauge_pids(str(tmp_path))
    assert pids == ({int(pid)} if multiprocess else set())
    if multiprocess:
        mark_process_dead(int(pid), str(tmp_path))  # type: ignore[no-untyped-call]
        assert _compat.prometheus_live_gauge_pids(str(tmp_path)) == set()


class _NatsClient:
    """What ``nats_subscribe_direct``'s raw path uses of a nats-py client."""

    def __init__(self) -> None:
        self._subs: dict[int, Any] = {}
        self.stats = {"in_msgs": 0, "in_bytes": 0}
        self.processed: list[bytes] = []

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: Any
    ) -> None:
        self.processed.append(data)


async def test_a_raw_nats_message_is_handled_without_a_coroutine() -> None:
    import inspect
    from types import SimpleNamespace

    from taskiq_batching._compat import nats as nats_compat

    client = _NatsClient()
    subscription = SimpleNamespace(_id=1, _received=0, _max_msgs=0)
    client._subs[1] = subscription
    raw: list[tuple[bytes, bytes]] = []
    nats_compat._serve_bare(client, subscription, lambda r, d: raw.append((r, d)))
    process: Any = client._process_msg  # the parser calls it, then awaits
    done = process(1, b"s", b"reply", b"data", None)
    assert not inspect.iscoroutine(done)  # none made per raw message
    assert raw == [(b"reply", b"data")]
    for _ in range(2):  # the same done awaitable, every time
        assert await done is None
    assert process(1, b"s", b"r", b"d", None) is done
    assert client.stats == {"in_msgs": 2, "in_bytes": 5}
    assert subscription._received == 2
    # With headers: as the client handles it (its coroutine, awaited).
    await process(1, b"s", b"r", b"with", b"NATS/1.0\r\n\r\n")
    assert client.processed == [b"with"]
    assert len(raw) == 2
