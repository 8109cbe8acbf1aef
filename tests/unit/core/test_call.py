"""Running a batch: one call, one outcome per message, isolation of failing items."""

import asyncio
import contextvars
import math
import sys
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest
from taskiq import Context, InMemoryBroker, TaskiqDepends, TaskiqState

from taskiq_batching import (
    BatchInfo,
    BatchTimeoutError,
    FlushReason,
    batch_task,
    per_item,
)
from taskiq_batching.core.analysis import analyse
from taskiq_batching.core.buffer import Buffer, Envelope, Held
from taskiq_batching.core.call import Outcome, RunOptions, run_batch
from taskiq_batching.settings import BatchSettings
from taskiq_batching.spec import BatchSpec
from tests.helpers import CountingMiddleware, memory_broker

pytestmark = pytest.mark.timeout(30)

current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant")


class Poison(Exception):
    pass


def spec_for(
    func: Callable[..., Any],
    *,
    isolate: bool = False,
    timeout: float | None = None,
) -> BatchSpec:
    return BatchSpec(
        task_name="t",
        settings=BatchSettings(batch_size=100, isolate=isolate),
        signature=analyse("t", func),
        timeout=timeout,
    )


def buffer_of(items: list[Any], args: list[Any] | None = None, **kwargs: Any) -> Buffer:
    loop = asyncio.get_running_loop()
    buffer = Buffer("t", (), args or [], kwargs, loop.time())
    for index, item in enumerate(items):
        envelope = Envelope(f"id-{index}", "t", {}, [item], {})
        buffer.items.append(Held(envelope, ack=None, arrived=loop.time(), item=item))
    return buffer


async def run(
    func: Callable[..., Any],
    items: list[Any],
    *,
    broker: InMemoryBroker | None = None,
    options: RunOptions | None = None,
    reason: FlushReason = FlushReason.SIZE,
    **spec: Any,
) -> list[Outcome]:
    return await run_batch(
        broker or InMemoryBroker(),
        spec_for(func, **spec),
        buffer_of(items),
        reason,
        options or RunOptions(),
    )


# --- run_batch --------------------------------------------------------------------


async def test_one_call_with_every_item_and_one_shared_outcome() -> None:
    calls: list[list[int]] = []

    async def total(items: list[int]) -> int:
        calls.append(list(items))
        return sum(items)

    outcomes = await run(total, [1, 2, 3])
    assert calls == [[1, 2, 3]]
    assert outcomes == [Outcome(6)] * 3


async def test_per_item_results_and_errors() -> None:
    error = ValueError("bad 2")

    async def each(items: list[int]) -> Any:
        return per_item(error if i == 2 else i * 10 for i in items)

    assert await run(each, [1, 2, 3]) == [
        Outcome(10),
        Outcome(error=error),
        Outcome(30),
    ]


async def test_the_buffers_extra_arguments_are_passed() -> None:
    seen: list[tuple[list[int], str, int]] = []

    async def handler(items: list[int], tenant: str, weight: int = 1) -> None:
        seen.append((items, tenant, weight))

    buffer = buffer_of([1, 2], ["a"], weight=3)
    await run_batch(
        InMemoryBroker(), spec_for(handler), buffer, FlushReason.SIZE, RunOptions()
    )
    assert seen == [([1, 2], "a", 3)]


async def test_an_error_is_every_items_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails(items: list[int]) -> None:
        raise Poison(f"boom on {items}")

    outcomes = await run(fails, [1, 2, 3])
    assert len({id(o.error) for o in outcomes}) == 1
    assert isinstance(outcomes[0].error, Poison)
    assert str(outcomes[0].error) == "boom on [1, 2, 3]"
    assert "batch of 3 of t failed" in caplog.text


async def test_the_timeout_label_limits_the_call_and_cancels_it() -> None:
    cancelled = asyncio.Event()

    async def slow(items: list[int]) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    outcomes = await run(slow, [1, 2, 3], timeout=0.05)
    assert cancelled.is_set()
    error = outcomes[0].error
    assert isinstance(error, BatchTimeoutError)
    assert (error.task_name, error.size, error.timeout) == ("t", 3, 0.05)
    assert all(o.error is error for o in outcomes)


async def test_a_call_within_the_timeout_is_not_affected() -> None:
    async def quick(items: list[int]) -> int:
        return len(items)

    assert await run(quick, [1, 2], timeout=5) == [Outcome(2)] * 2


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="Python 3.10 cannot tell it from a cancellation of the worker",
)
async def test_a_cancelled_error_the_function_raises_is_its_outcome() -> None:
    async def gives_up(items: list[int]) -> None:
        raise asyncio.CancelledError("given up")

    outcomes = await run(gives_up, [1, 2])
    assert all(isinstance(o.error, asyncio.CancelledError) for o in outcomes)


async def test_a_cancelled_run_is_cancelled() -> None:
    started = asyncio.Event()

    async def waits(items: list[int]) -> None:
        started.set()
        await asyncio.Event().wait()

    running = asyncio.create_task(run(waits, [1], isolate=True))
    await started.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_a_sync_function_runs_off_the_loop_in_the_callers_context() -> None:
    loop_thread = threading.get_ident()
    seen: list[tuple[int, str]] = []

    def handler(items: list[int]) -> int:
        seen.append((threading.get_ident(), current_tenant.get("unset")))
        return sum(items)

    current_tenant.set("acme")
    with ThreadPoolExecutor(1) as executor:
        outcomes = await run(handler, [3, 4], options=RunOptions(executor=executor))
    assert outcomes == [Outcome(7)] * 2
    assert seen[0][0] != loop_thread
    assert seen[0][1] == "acme"
    assert await run(handler, [1]) == [Outcome(1)]  # the loop's default executor


def total(items: list[int]) -> int:
    return sum(items)


async def test_a_sync_function_runs_in_a_process_pool() -> None:
    with ProcessPoolExecutor(1) as executor:
        outcomes = await run(total, [1, 2, 3], options=RunOptions(executor=executor))
    assert outcomes == [Outcome(6)] * 3


async def test_dependencies_are_resolved_once_for_the_batch() -> None:
    broker = InMemoryBroker()
    broker.state.greeting = "hi"
    broker.custom_dependency_context = {int: 42}
    opened: list[str] = []

    async def database() -> AsyncGenerator[str, None]:
        opened.append("open")
        yield "db"
        opened.append("close")

    seen: dict[str, Any] = {}

    async def handler(
        items: list[int],
        context: Context = TaskiqDepends(),
        state: TaskiqState = TaskiqDepends(),
        db: str = TaskiqDepends(database),
        info: BatchInfo = TaskiqDepends(),
        number: int = TaskiqDepends(),
    ) -> None:
        seen.update(
            first=context.message.task_id,
            greeting=state.greeting,
            db=db,
            info=(info.task_name, info.flush_reason, info.size, info.task_ids),
            isolating=info.isolating,
            waited=info.waited,
            messages=[m.args for m in info.messages],
            number=number,
        )

    await run(handler, [5, 6, 7], broker=broker, reason=FlushReason.TIMEOUT)
    assert seen == {
        "first": "id-0",
        "greeting": "hi",
        "db": "db",
        "info": ("t", FlushReason.TIMEOUT, 3, ["id-0", "id-1", "id-2"]),
        "isolating": False,
        "waited": seen["waited"],
        "messages": [[5], [6], [7]],
        "number": 42,
    }
    assert seen["waited"] >= 0
    assert opened == ["open", "close"]


@pytest.mark.parametrize("propagate", [True, False])
async def test_a_dependencys_teardown_sees_the_batchs_error_if_propagated(
    propagate: bool,
) -> None:
    seen: list[BaseException | None] = []

    async def resource() -> AsyncGenerator[str, None]:
        try:
            yield "r"
        except Poison as exc:
            seen.append(exc)
            raise
        else:
            seen.append(None)

    async def handler(items: list[int], r: str = TaskiqDepends(resource)) -> None:
        raise Poison("failed")

    options = RunOptions(propagate_exceptions=propagate)
    outcomes = await run(handler, [1], options=options)
    assert isinstance(outcomes[0].error, Poison)
    assert len(seen) == 1
    assert isinstance(seen[0], Poison) is propagate


async def test_dependency_overrides_are_honoured() -> None:
    broker = InMemoryBroker()

    def real() -> str:
        return "real"

    def fake() -> str:
        return "fake"

    broker.dependency_overrides = {real: fake}
    seen: list[str] = []

    async def handler(items: list[int], value: str = TaskiqDepends(real)) -> None:
        seen.append(value)

    await run(handler, [1], broker=broker)
    assert seen == ["fake"]


# --- isolation of failing items ---------------------------------------------------


@pytest.mark.parametrize(
    ("size", "bad"), [(64, {17}), (100, {0, 99}), (37, {5, 6, 7}), (8, set())]
)
async def test_isolation_fails_only_the_poison_items(size: int, bad: set[int]) -> None:
    calls: list[tuple[int, bool]] = []

    async def handler(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
        calls.append((len(items), info.isolating))
        if bad & set(items):
            raise Poison(f"poison in {sorted(bad & set(items))}")
        return len(items)

    outcomes = await run(handler, list(range(size)), isolate=True)
    for item, outcome in enumerate(outcomes):
        if item in bad:
            assert isinstance(outcome.error, Poison)
            assert str(outcome.error) == f"poison in [{item}]"
        else:
            assert outcome.error is None
    extra_calls = len(calls) - 1
    assert calls[0] == (size, False)
    assert all(isolating for _, isolating in calls[1:])
    if bad:
        assert 0 < extra_calls <= 2 * len(bad) * math.ceil(math.log2(size))
    else:
        assert extra_calls == 0


async def test_isolation_keeps_per_item_results_of_the_halves() -> None:
    async def handler(items: list[int]) -> Any:
        if 3 in items and len(items) > 1:
            raise Poison("3 spoils its batch")
        return per_item(ValueError("3 alone") if i == 3 else i for i in items)

    outcomes = await run(handler, [1, 2, 3, 4], isolate=True)
    assert [o.value for o in outcomes] == [1, 2, None, 4]
    assert isinstance(outcomes[2].error, ValueError)
    assert str(outcomes[2].error) == "3 alone"


async def test_without_isolation_a_failure_fails_the_whole_batch_once() -> None:
    calls = 0

    async def handler(items: list[int]) -> None:
        nonlocal calls
        calls += 1
        raise Poison("one bad item")

    outcomes = await run(handler, list(range(10)))
    assert calls == 1
    assert all(isinstance(o.error, Poison) for o in outcomes)


# --- on a broker ------------------------------------------------------------------


async def test_an_error_is_stored_for_every_message_and_on_error_runs_for_each() -> (
    None
):
    counting = CountingMiddleware()
    broker = memory_broker().with_middlewares(counting)

    @batch_task(broker, batch_size=3)
    async def handler(items: list[int]) -> None:
        raise RuntimeError(f"boom on {items}")

    await broker.startup()
    tasks = [await handler.kiq(i) for i in range(3)]
    await broker.wait_all()
    for task in tasks:
        result = await task.wait_result(timeout=1)
        assert isinstance(result.error, RuntimeError)
        assert str(result.error) == "boom on [0, 1, 2]"
    counting.assert_once_per_message([], [t.task_id for t in tasks])
    await broker.shutdown()


async def test_the_timeout_label_fails_each_message_with_batch_timeout_error() -> None:
    broker = memory_broker()
    calls = 0

    @batch_task(broker, batch_size=3, timeout=0.05)
    async def slow(items: list[int]) -> None:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()

    await broker.startup()
    tasks = [await slow.kiq(i) for i in range(3)]
    await broker.wait_all()
    assert calls == 1
    for task in tasks:
        error = (await task.wait_result(timeout=1)).error
        assert isinstance(error, BatchTimeoutError)
        assert str(error) == (
            f"Batch of 3 message(s) of task {slow.task_name!r} exceeded its "
            "timeout of 0.05 s"
        )
    await broker.shutdown()


async def test_isolation_on_a_broker_stores_each_items_own_outcome() -> None:
    broker = memory_broker()

    @batch_task(broker, batch_size=8, batch_isolate=True)
    async def handler(items: list[int]) -> int:
        if 5 in items:
            raise Poison("5")
        return len(items)

    await broker.startup()
    sent = [await handler.kiq(i) for i in range(8)]
    await broker.wait_all()
    results = [await task.wait_result(timeout=1) for task in sent]
    assert [isinstance(r.error, Poison) for r in results] == [i == 5 for i in range(8)]
    await broker.shutdown()
