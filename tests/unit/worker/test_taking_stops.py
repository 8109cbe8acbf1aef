"""The taker at a stop and on broker errors (``worker/taking.py``). The
worker's world: ``taking_world.py``.
"""

import asyncio
import itertools
import logging

import pytest
from taskiq.receiver import Receiver

from taskiq_batching import batch_task
from taskiq_batching.worker import taking
from tests.helpers import running_worker
from tests.unit.worker.fake_source import FakeSource
from tests.unit.worker.taking_world import preloaded, recorded, worker_world

pytestmark = pytest.mark.timeout(30)


async def test_a_stop_ends_taking_and_the_take_in_flight_still_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, broker, seen = worker_world(monkeypatch)

    batched = recorded(broker, seen, 2)

    stopping = asyncio.Event()

    class Watched(taking.Taker):
        async def stop(self, deadline: float | None) -> None:
            stopping.set()  # seen once ``stop`` has asked the loop to end
            await super().stop(deadline)

    monkeypatch.setattr("taskiq_batching.worker.pump.Taker", Watched)
    await preloaded(broker, source, batched, 6)
    source.hold_takes = asyncio.Event()
    source.reply_seconds = 0.05  # the reply is on its way when the stop comes
    receiver = Receiver(broker)
    finish = asyncio.Event()
    listening = asyncio.create_task(receiver.listen(finish))
    await source.take_started.wait()
    finish.set()  # SIGTERM while the take is in flight
    await stopping.wait()
    source.hold_takes.set()
    await asyncio.wait_for(listening, 10)
    await broker.shutdown()
    assert len(source.takes) == 1
    assert seen.batches == [[0, 1]]
    assert len(source.acked) == 2
    assert source.left() == 4  # still in the broker: nothing lost


async def test_broker_errors_are_retried_after_growing_pauses(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(taking, "BACKOFF_FIRST_SECONDS", 0.01)
    monkeypatch.setattr(taking, "BACKOFF_MAX_SECONDS", 0.04)
    source, broker, _ = worker_world(
        monkeypatch,
        FakeSource(error=ConnectionError("connection refused")),
        forward=True,
    )

    @batch_task(broker, batch_size=2, batch_timeout=3600)
    async def batched(items: list[int]) -> None: ...

    @broker.task
    async def plain() -> int:
        return 7

    caplog.set_level(logging.ERROR, "taskiq_batching")
    async with running_worker(broker):
        while len(source.take_times) < 6:
            source.called.clear()
            await source.called.wait()
        # The worker goes on serving plain tasks meanwhile.
        assert (await (await plain.kiq()).wait_result(timeout=5)).return_value == 7
    times = source.take_times[:6]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for gap, pause in zip(gaps, [0.01, 0.02, 0.04, 0.04, 0.04], strict=True):
        assert gap >= pause * 0.9
    assert "connection refused" in caplog.text
    assert "trying again in" in caplog.text
