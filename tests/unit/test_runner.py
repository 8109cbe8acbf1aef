"""Running a batch: isolation of failing items by bisection."""

import math

import pytest
from taskiq import TaskiqDepends

from taskiq_batching import BatchConfigError, BatchInfo, batch_task
from tests.helpers import memory_broker

pytestmark = pytest.mark.timeout(30)


class Poison(Exception):
    pass


@pytest.mark.parametrize(
    ("size", "bad"), [(64, {17}), (100, {0, 99}), (37, {5, 6, 7}), (8, set())]
)
async def test_isolation_fails_only_the_poison_items(size: int, bad: set[int]) -> None:
    broker = memory_broker()
    calls: list[tuple[int, bool]] = []

    @batch_task(broker, batch_size=size, batch_isolate=True)
    async def handler(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
        calls.append((len(items), info.isolating))
        if bad & set(items):
            raise Poison(f"poison in {sorted(bad & set(items))}")
        return len(items)

    await broker.startup()
    sent = [await handler.kiq(i) for i in range(size)]
    await broker.wait_all()
    for item, task in enumerate(sent):
        result = await task.wait_result(timeout=1)
        if item in bad:
            assert isinstance(result.error, Poison)
            assert str(result.error) == f"poison in [{item}]"
        else:
            assert not result.is_err, result.error
    extra_calls = len(calls) - 1
    assert extra_calls <= 2 * len(bad) * math.ceil(math.log2(size))
    assert calls[0] == (size, False)
    assert all(isolating for _, isolating in calls[1:])
    assert extra_calls == 0 if not bad else extra_calls > 0
    await broker.shutdown()


async def test_without_isolation_a_failure_fails_the_whole_batch_once() -> None:
    broker = memory_broker()
    calls = 0

    @batch_task(broker, batch_size=10)
    async def handler(items: list[int]) -> None:
        nonlocal calls
        calls += 1
        raise Poison("one bad item")

    await broker.startup()
    sent = [await handler.kiq(i) for i in range(10)]
    await broker.wait_all()
    assert calls == 1
    for task in sent:
        assert isinstance((await task.wait_result(timeout=1)).error, Poison)
    await broker.shutdown()


def test_isolate_label_must_be_a_bool() -> None:
    broker = memory_broker()
    with pytest.raises(BatchConfigError, match="batch_isolate must be True or False"):

        @broker.task(batch=True, batch_size=2, batch_isolate="yes")
        async def handler(items: list[int]) -> None: ...
