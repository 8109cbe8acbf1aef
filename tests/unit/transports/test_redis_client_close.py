"""The plugin's own Sentinel clients outlive the pump (issue 16, item 2), and
``BatchingMiddleware.shutdown()`` closes them: the worker's and the sender's."""

from typing import Any

from taskiq.receiver import Receiver
from taskiq_redis import RedisStreamSentinelBroker

from taskiq_batching import BatchingMiddleware, batch_task
from taskiq_batching.producer import _sender


class FakeMaster:
    """Stands for the client ``Sentinel.master_for`` returns."""

    def __init__(self) -> None:
        self.closed = 0

    def set_response_callback(self, command: str, callback: Any) -> None:
        pass

    async def aclose(self) -> None:
        self.closed += 1


class FakeSentinel:
    def __init__(self) -> None:
        self.masters: list[FakeMaster] = []

    def master_for(self, name: str, **kwargs: Any) -> FakeMaster:
        self.masters.append(FakeMaster())
        return self.masters[-1]


class Listening(Receiver):
    """A Receiver that only calls ``broker.listen()`` (the worker's transport)."""

    def start(self) -> Any:
        return self.broker.listen()


def _sentinel_broker() -> tuple[RedisStreamSentinelBroker, FakeSentinel]:
    broker = RedisStreamSentinelBroker(
        sentinels=[("127.0.0.1", 1)], master_name="m"
    ).with_middlewares(BatchingMiddleware())
    sentinel = FakeSentinel()
    broker.sentinel = sentinel  # type: ignore[assignment]

    @batch_task(broker, batch_size=2, batch_timeout=1, task_name="rows")
    async def rows(items: list[int]) -> int:
        return len(items)

    return broker, sentinel


async def test_the_workers_client_is_closed_at_broker_shutdown_not_at_pump_stop() -> (
    None
):
    broker, sentinel = _sentinel_broker()
    deliveries = Listening(broker, run_startup=False).start()
    (master,) = sentinel.masters
    transport = BatchingMiddleware.of(broker)._opened[0]

    # The pump stops reading: plain tasks still run in taskiq's Receiver
    # and ack through this client (for_receiver).
    await transport.close()
    await deliveries.aclose()
    assert master.closed == 0

    # The broker shuts down after the Receiver finished its callbacks.
    await BatchingMiddleware.of(broker).shutdown()
    assert master.closed == 1
    await BatchingMiddleware.of(broker).shutdown()
    assert master.closed == 1, "closed once"


async def test_the_senders_client_is_closed_at_broker_shutdown() -> None:
    broker, sentinel = _sentinel_broker()
    sender = _sender(broker)
    (master,) = sentinel.masters
    assert _sender(broker) is sender, "one sender per broker"

    await BatchingMiddleware.of(broker).shutdown()
    assert master.closed == 1
    # Sending after a shutdown (and a new startup) opens a new client.
    assert _sender(broker) is not sender
    assert len(sentinel.masters) == 2
