"""What each message gets from a batch that goes wrong, under a real worker.

RedisStreamBroker on the shared Redis. Every test prints what it measured
(``-s``).
"""

from typing import Any

import pytest
from redis.asyncio import Redis

from taskiq_batching import BatchResultError
from tests.integration.faults.conftest import Producer, StartWorker
from tests.integration.faults.observe import (
    batches,
    pending,
    results,
    send,
    started,
    wait,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(60)]


@pytest.fixture
def config(redis_url: str) -> dict[str, str]:
    return {"TB_BROKER": "stream", "REDIS_URL": redis_url, "TB_IDLE_MS": "2000"}


@pytest.mark.parametrize(
    ("task", "argument", "values"),
    [
        ("with_secret", "api_key", ["key-a", "key-b"]),
        (
            "with_tenant",
            "tenant",
            [{"name": "acme", "token": "t-a"}, {"name": "acme", "token": "t-b"}],
        ),
    ],
    ids=["SecretStr", "Field-repr-False"],
)
async def test_arguments_with_a_hiding_repr_never_share_a_batch(
    task: str,
    argument: str,
    values: list[Any],
    redis: Redis,
    queue: str,
    config: dict[str, str],
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """Finding 5: two tenants whose extra argument prints the same
    (``SecretStr('**********')``, a ``Field(repr=False)`` token) but differs:
    separate batches, each called with its own value, each message gets its
    own batch's result."""
    broker = await producer(config)
    worker = start_worker(config)
    sent = [
        await send(broker, task, [item], **{argument: values[item % 2]})
        for item in range(40)
    ]
    got = await results([one for (one,) in sent], 20, task)
    expected = ["key-a", "key-b"] if task == "with_secret" else ["t-a", "t-b"]
    field = "key" if task == "with_secret" else "token"
    for item, value in enumerate(got):
        assert not value.is_err, value.error
        assert value.return_value[field] == expected[item % 2], (item, value)
        assert item in value.return_value["items"]
        assert {i % 2 for i in value.return_value["items"]} == {item % 2}
    recorded = await batches(redis, queue, task)
    print(
        f"\n{task}: 40 messages over two {argument} values: batches "
        f"{[sorted({i % 2 for i in b['items']}) for b in recorded]} (parities)"
    )
    assert all(len({i % 2 for i in b["items"]}) == 1 for b in recorded), recorded
    assert worker.crashes() == 0


@pytest.mark.parametrize("task", ["returns_object", "returns_set"])
async def test_unserializable_result_is_settled_once(
    task: str,
    redis: Redis,
    queue: str,
    config: dict[str, str],
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """Finding 6: a batch returns what the JSON serializer cannot encode (an
    object; a set of objects). The batch runs once, each message is acked
    and its task_id gets a ``BatchResultError`` (the old worker left them
    unacked: re-run every idle_timeout, 2 s here, forever)."""
    broker = await producer(config)
    worker = start_worker(config)
    sent = await send(broker, task, list(range(10)), ordered=True)
    got = await results(sent, 20, task)
    for value in got:
        assert value.is_err
        assert isinstance(value.error, BatchResultError), repr(value.error)

    async def acked() -> bool:
        return await pending(redis, queue) == 0

    await wait("every message acked", acked, 10, worker)
    calls = await batches(redis, queue, task)
    print(
        f"\n{task}: {len(calls)} batch call(s), 10 x {type(got[0].error).__name__}: "
        f"{got[0].error}"
    )
    assert [c["size"] for c in calls] == [10], calls


async def test_keyboard_interrupt_or_system_exit_fail_their_messages_only(
    redis: Redis,
    queue: str,
    config: dict[str, str],
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """Finding 10: a batch function (async, or sync in the thread pool)
    raises ``KeyboardInterrupt`` or ``SystemExit``: its messages get that
    error as their result, and the worker process goes on (same pid, no
    crash line; the old worker child died and was restarted)."""
    broker = await producer(config)
    worker = start_worker(config)
    cases = [
        ("raises", "keyboard", [1, 2, 3], "KeyboardInterrupt"),
        ("raises", "exit", [4, 5], "SystemExit"),
        ("raises_sync", "keyboard", [6, 7], "KeyboardInterrupt"),
        ("raises_sync", "exit", [8], "SystemExit"),
    ]
    for task, kind, items, _ in cases:
        sent = await send(broker, task, items, kind=kind, ordered=True)
        # One case at a time: each batch runs alone, the worker still up.
        expected = next(case[3] for case in cases if case[:2] == (task, kind))
        for value in await results(sent, 20, f"{task} {kind}"):
            assert value.is_err, value
            assert type(value.error).__name__ == expected, repr(value.error)
    after = await results(
        await send(broker, "raises", [9, 10], kind="none", ordered=True), 20, "after"
    )
    assert [value.return_value for value in after] == [2, 2]
    pids = {b["pid"] for b in await batches(redis, queue, "raises")}
    print(
        f"\nKeyboardInterrupt/SystemExit in batches: every message got its error; "
        f"batches ran in pid(s) {sorted(pids)}; crash lines: {worker.crashes()}"
    )
    assert len(pids) == 1
    assert worker.crashes() == 0, worker.output()
    assert worker.process.poll() is None

    async def acked() -> bool:
        return await pending(redis, queue) == 0

    await wait("every message acked", acked, 10, worker)


async def test_message_left_unfinished_by_a_middleware_is_delivered_again(
    redis: Redis,
    queue: str,
    config: dict[str, str],
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """A middleware's ``post_execute`` fails once for each message: taskiq
    leaves such a message unacked, for the broker to deliver again. A stream
    worker claims entries idle for ``idle_timeout`` (2 s): the same, still
    running worker processes them again and stores their results."""
    settings = {**config, "TB_FAIL_ONCE": "1", "TB_BATCH_SIZE": "10"}
    broker = await producer(settings)
    worker = start_worker(settings)
    sent = await send(broker, "collect", list(range(10)), ordered=True)

    async def failed() -> bool:
        return await started(redis, queue, "failed_post_execute") >= 10

    await wait("post_execute failed for every message", failed, 15, worker)
    got = await results(sent, 15, "the messages delivered again")
    assert all(not value.is_err for value in got)
    print(f"\nleft unfinished, delivered again: {len(got)} results")
