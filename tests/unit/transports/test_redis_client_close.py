"""The plugin's own Sentinel client outlives the pump (issue 16, item 2)."""

from typing import Any

from taskiq import TaskiqEvents, TaskiqState
from taskiq_redis import RedisStreamSentinelBroker

from taskiq_batching.transports.redis_stream import StreamTransport


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


async def test_plain_acks_still_have_their_client_after_the_pump_stops() -> None:
    broker = RedisStreamSentinelBroker(sentinels=[("127.0.0.1", 1)], master_name="m")
    sentinel = FakeSentinel()
    broker.sentinel = sentinel  # type: ignore[assignment]
    transport = StreamTransport(broker)
    (master,) = sentinel.masters

    # The pump stops reading: plain tasks still run in taskiq's Receiver
    # and ack through this client (for_receiver).
    await transport.close()
    assert master.closed == 0

    # The broker shuts down after the Receiver finished its callbacks.
    for handler in broker.event_handlers[TaskiqEvents.WORKER_SHUTDOWN]:
        awaitable = handler(TaskiqState())
        assert awaitable is not None
        await awaitable
    assert master.closed == 1
