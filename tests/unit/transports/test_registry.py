"""Which transport each broker gets, and which result writer each backend."""

import logging
import subprocess
import sys
from collections.abc import AsyncGenerator, Callable
from typing import Any

import pytest
from taskiq import (
    AckableMessage,
    AsyncBroker,
    BrokerMessage,
    InMemoryBroker,
    TaskiqResult,
)
from taskiq.brokers.inmemory_broker import InmemoryResultBackend
from taskiq_aio_pika import AioPikaBroker
from taskiq_redis import (
    ListQueueBroker,
    ListQueueClusterBroker,
    ListQueueSentinelBroker,
    PubSubBroker,
    RedisAsyncClusterResultBackend,
    RedisAsyncResultBackend,
    RedisAsyncSentinelResultBackend,
    RedisStreamBroker,
    RedisStreamClusterBroker,
    RedisStreamSentinelBroker,
)

from taskiq_batching import transports
from taskiq_batching._compat import redis_py
from taskiq_batching.errors import MissingDependencyError
from taskiq_batching.transports import results_for, sender_for, transport_for
from taskiq_batching.transports.amqp import AmqpTransport
from taskiq_batching.transports.generic import GenericResults, GenericTransport
from taskiq_batching.transports.redis_list import ListTransport
from taskiq_batching.transports.redis_results import RedisResults
from taskiq_batching.transports.redis_stream import StreamTransport
from tests.helpers import QueueBroker

pytestmark = pytest.mark.timeout(30)

URL = "redis://localhost:6379/0"
SENTINELS = [("localhost", 26379)]
CLUSTER = "redis://localhost:7000"


class OwnStream(RedisStreamBroker):
    """A subclass that changes nothing."""


class StreamListeningItsWay(RedisStreamBroker):
    async def listen(self) -> AsyncGenerator[Any, None]:
        yield b"its own way"


class StreamKickingItsWay(RedisStreamBroker):
    kicked: list[str]

    async def kick(self, message: BrokerMessage) -> None:
        self.kicked.append(message.task_id)


class OwnList(ListQueueBroker):
    """A subclass that changes nothing."""


class ListListeningItsWay(ListQueueBroker):
    async def listen(self) -> AsyncGenerator[bytes, None]:
        yield b"its own way"


class ListKickingItsWay(ListQueueBroker):
    kicked: list[str]

    async def kick(self, message: BrokerMessage) -> None:
        self.kicked.append(message.task_id)


STREAMS: dict[str, Callable[[], AsyncBroker]] = {
    "stream": lambda: RedisStreamBroker(URL),
    "stream-subclass": lambda: OwnStream(URL),
}
LISTS: dict[str, Callable[[], AsyncBroker]] = {
    "list": lambda: ListQueueBroker(URL),
    "list-sentinel": lambda: ListQueueSentinelBroker(SENTINELS, "m"),
    "list-cluster": lambda: ListQueueClusterBroker(CLUSTER),
    "list-subclass": lambda: OwnList(URL),
}
GENERIC: dict[str, Callable[[], AsyncBroker]] = {
    "inmemory": InMemoryBroker,
    "unknown": QueueBroker,
    "pubsub": lambda: PubSubBroker(URL),
    "stream-own-listen": lambda: StreamListeningItsWay(URL),
    "list-own-listen": lambda: ListListeningItsWay(URL),
}
KICKING: dict[str, Callable[[], AsyncBroker]] = {
    "stream-own-kick": lambda: StreamKickingItsWay(URL),
    "list-own-kick": lambda: ListKickingItsWay(URL),
}


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_taskiq_redis_stream_brokers_get_the_stream_transport(name: str) -> None:
    assert type(transport_for(STREAMS[name]())) is StreamTransport


@pytest.mark.parametrize(
    "make",
    [
        lambda: RedisStreamSentinelBroker(SENTINELS, "m"),
        lambda: RedisStreamClusterBroker(CLUSTER),
    ],
    ids=["sentinel", "cluster"],
)
def test_sentinel_and_cluster_stream_brokers_get_the_stream_transport(
    make: Callable[[], AsyncBroker],
) -> None:
    assert type(transport_for(make())) is StreamTransport


@pytest.mark.parametrize("name", sorted(LISTS))
def test_taskiq_redis_list_brokers_get_the_list_transport(name: str) -> None:
    assert type(transport_for(LISTS[name]())) is ListTransport


@pytest.mark.parametrize("name", sorted(GENERIC))
def test_other_brokers_get_the_generic_transport(name: str) -> None:
    transport = transport_for(GENERIC[name]())
    assert type(transport) is GenericTransport
    assert transport.prefetch is None


@pytest.mark.parametrize("name", sorted(KICKING))
async def test_a_subclass_with_its_own_kick_sends_with_it(name: str) -> None:
    broker: Any = KICKING[name]()
    broker.kicked = []
    messages = [
        BrokerMessage(task_id=f"t{i}", task_name="n", message=b"m", labels={})
        for i in range(3)
    ]
    await sender_for(broker).send(messages)
    assert broker.kicked == ["t0", "t1", "t2"]


async def test_the_generic_transport_reads_the_listener_it_is_given() -> None:
    async def listen() -> AsyncGenerator[bytes, None]:
        yield b"given"

    transport = transport_for(QueueBroker(), listen)
    assert [d.data for d in await transport.read(1)] == [b"given"]


def test_an_amqp_broker_gets_the_amqp_transport_with_its_prefetch() -> None:
    transport = transport_for(AioPikaBroker("amqp://guest:guest@localhost/", qos=7))
    assert type(transport) is AmqpTransport
    assert transport.prefetch == 7


def test_an_amqp_broker_waits_in_task_queues_only_when_told() -> None:
    broker = AioPikaBroker("amqp://guest:guest@localhost/", qos=7)
    for choice in (None, False):
        plain = transport_for(broker, wait_in_broker=choice)
        assert type(plain) is AmqpTransport
        assert plain.forwarder is None
        assert sender_for(broker, wait_in_broker=choice).batch_sender is None
    waiting = transport_for(broker, wait_in_broker=True)
    assert type(waiting) is AmqpTransport
    assert waiting.forwarder is not None
    assert sender_for(broker, wait_in_broker=True).batch_sender is not None
    assert waiting.batches is None  # deliveries are read, not taken whole


class OwnListenAmqpBroker(AioPikaBroker):
    """Overrides ``listen``: its own listener is kept."""

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        async for message in super().listen():
            yield message


def test_an_amqp_broker_with_its_own_listen_keeps_it_with_its_prefetch() -> None:
    transport = transport_for(OwnListenAmqpBroker("amqp://guest@localhost/", qos=7))
    assert type(transport) is GenericTransport
    assert transport.prefetch == 7


@pytest.mark.parametrize(
    ("make", "wired"),
    [
        (lambda: RedisAsyncResultBackend(URL), True),
        (lambda: RedisAsyncSentinelResultBackend(SENTINELS, "m"), True),
        (lambda: RedisAsyncClusterResultBackend(CLUSTER), False),
    ],
    ids=["standalone", "sentinel", "cluster"],
)
def test_taskiq_redis_backends_get_the_redis_writer(
    make: Callable[[], Any], wired: bool
) -> None:
    writer = results_for(make())
    assert type(writer) is RedisResults
    assert writer.wired is wired  # a cluster's keys span slots: a pipeline


class OwnBackend(RedisAsyncResultBackend[Any]):
    """A subclass that changes nothing."""


class StoringItsWay(RedisAsyncResultBackend[Any]):
    async def set_result(self, task_id: str, result: TaskiqResult[Any]) -> None:
        await super().set_result(task_id, result)


def test_backends_that_store_their_own_way_get_the_generic_writer() -> None:
    assert type(results_for(OwnBackend(URL))) is RedisResults
    assert type(results_for(StoringItsWay(URL))) is GenericResults
    assert type(results_for(InmemoryResultBackend())) is GenericResults


def test_a_broker_of_another_library_imports_no_redis_transport() -> None:
    code = (
        "import sys\n"
        "from taskiq import InMemoryBroker\n"
        "from taskiq_batching import BatchingMiddleware\n"
        "from taskiq_batching.transports import results_for, transport_for\n"
        "broker = InMemoryBroker().with_middlewares(BatchingMiddleware())\n"
        "transport_for(broker)\n"
        "results_for(broker.result_backend)\n"
        "loaded = [m for m in sys.modules if m.startswith(('redis', 'taskiq_redis',"
        " 'taskiq_batching.transports.redis', 'taskiq_batching.transports.amqp'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_without_hiredis_redis_streams_get_the_generic_transport_and_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(redis_py, "HIREDIS", False)
    monkeypatch.setattr(transports, "_warned", set())
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        # A list broker keeps its transport, and says nothing: one blocking
        # pop, which hiredis does not make cheaper.
        for make in LISTS.values():
            assert type(transport_for(make())) is ListTransport
        assert not caplog.records
        for make in STREAMS.values():
            assert type(transport_for(make())) is GenericTransport
        assert type(transport_for(RedisStreamClusterBroker(CLUSTER))) is (
            GenericTransport
        )
        assert type(results_for(RedisAsyncResultBackend(URL))) is GenericResults
        # Other libraries' brokers keep theirs.
        amqp = AioPikaBroker("amqp://guest:guest@localhost/")
        assert type(transport_for(amqp)) is AmqpTransport
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "hiredis is not installed" in warnings[0]
    assert 'pip install "taskiq-batching[redis]"' in warnings[0]


def test_without_hiredis_waiting_in_a_redis_stream_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its workers would read only the main stream, never what producers
    # with hiredis put where batches wait.
    monkeypatch.setattr(redis_py, "HIREDIS", False)
    with pytest.raises(MissingDependencyError, match=r"taskiq-batching\[redis\]"):
        transport_for(RedisStreamBroker(URL), wait_in_broker=True)
    assert type(transport_for(RedisStreamBroker(URL), wait_in_broker=False)) is (
        GenericTransport
    )
    for make in LISTS.values():
        waiting = transport_for(make(), wait_in_broker=True)
        assert type(waiting) is ListTransport


def test_with_hiredis_nothing_is_said(caplog: pytest.LogCaptureFixture) -> None:
    assert redis_py.hiredis_available()  # the [redis] extra brings it
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        assert type(transport_for(RedisStreamBroker(URL))) is StreamTransport
        assert type(results_for(RedisAsyncResultBackend(URL))) is RedisResults
    assert not caplog.records
