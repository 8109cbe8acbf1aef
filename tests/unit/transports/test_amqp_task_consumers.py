"""The task queues' connection: consumed again on a new one after the creation race."""

import logging
from collections.abc import Sequence
from typing import Any

import pytest
from aiormq.exceptions import ConnectionInternalError

from taskiq_batching.transports import amqp_task_consumers
from taskiq_batching.transports.amqp_task_consumers import TaskConsumers


class FakeConnection:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amqp_task_consumers, "RETRY_DELAYS", (0.0, 0.0, 0.0))


async def test_the_race_closes_only_that_connection_and_forgets_its_consumers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    made: list[FakeConnection] = []
    forgotten: list[list[str]] = []

    async def connect() -> FakeConnection:
        made.append(FakeConnection())
        return made[-1]

    async def setup(connection: Any, started: list[str]) -> None:
        started.append(f"first-{len(made)}")
        if len(made) < 3:  # the second queue is not ready twice
            raise ConnectionInternalError("INTERNAL_ERROR")
        started.append("second")

    consumers = TaskConsumers(connect)
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        await consumers.start(setup, lambda tags: forgotten.append(list(tags)))
    assert [c.closed for c in made] == [True, True, False]
    assert consumers.connection is made[2]
    assert forgotten == [["first-1"], ["first-2"]]
    assert len(caplog.records) == 1  # logged once
    await consumers.close()
    assert made[2].closed
    assert consumers.connection is None


async def test_other_errors_and_a_race_that_lasts_are_raised() -> None:
    made: list[FakeConnection] = []

    async def connect() -> FakeConnection:
        made.append(FakeConnection())
        return made[-1]

    async def refused(connection: Any, started: list[str]) -> None:
        raise PermissionError("ACCESS_REFUSED")

    async def racing(connection: Any, started: list[str]) -> None:
        raise ConnectionInternalError("INTERNAL_ERROR")

    def forget(tags: Sequence[str]) -> None:
        pass

    with pytest.raises(PermissionError):
        await TaskConsumers(connect).start(refused, forget)
    assert len(made) == 1
    with pytest.raises(ConnectionInternalError):
        await TaskConsumers(connect).start(racing, forget)
    assert len(made) == 1 + 4  # the first try and one per delay
