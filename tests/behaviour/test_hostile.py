"""Whatever a message carries, it fails alone, on every path.

Each case sends one hostile message between two good ones of a batched
task with ``batch_size=2``: the good ones run together, the hostile one
gets an error result of a named type under its task_id, and goes through
taskiq's per-message order (the hooks and acks of a plain task that
fails on the same path). Messages are crafted as bytes (any producer can
send them; ``kiq`` itself refuses to serialize some), then kicked.
"""

import json
import logging
import uuid
from typing import Any

import pytest
from pydantic import BaseModel, Field, SecretStr
from taskiq import AsyncBroker, AsyncTaskiqTask, BrokerMessage, InMemoryBroker
from taskiq.labels import prepare_label

from taskiq_batching import (
    BatchArgumentError,
    BatchingMiddleware,
    BatchItemError,
    PerItem,
    batch_task,
    per_item,
)
from tests.behaviour.paths import Path, running
from tests.hostile_vectors import GOOD, VECTORS, Item, key, where

pytestmark = pytest.mark.timeout(30)


async def kick_raw(
    broker: AsyncBroker,
    task_name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    labels: dict[str, Any],
) -> AsyncTaskiqTask[Any]:
    """Send a message as any producer may write it (labels typed as taskiq's)."""
    task_id = uuid.uuid4().hex
    prepared = {name: prepare_label(value) for name, value in labels.items()}
    body = {
        "task_id": task_id,
        "task_name": task_name,
        "labels": {name: text for name, (text, _) in prepared.items()},
        "labels_types": {name: kind for name, (_, kind) in prepared.items()},
        "args": args,
        "kwargs": kwargs,
    }
    data = json.dumps(body).encode()
    message = BrokerMessage(
        task_id=task_id, task_name=task_name, message=data, labels={}
    )
    await broker.kick(message)
    return AsyncTaskiqTask(task_id, broker.result_backend)


def declare(path: Path) -> None:
    broker = path.broker

    @batch_task(
        broker,
        task_name="hostile",
        batch_size=2,
        batch_where=where,
        batch_key=key,
        batch_cost=lambda item: item.cost,
        batch_max_cost=1e9,
    )
    async def hostile(
        items: list[Item], tenant: str = "a", note: Any = None
    ) -> PerItem[list[int]]:
        return per_item([item.n, len(items)] for item in items)

    @broker.task(task_name="plain")
    async def plain(item: Any) -> None:
        raise ValueError("plain failed")


@pytest.mark.parametrize("case", list(VECTORS))
async def test_a_hostile_message_fails_alone(path: Path, case: str) -> None:
    args, kwargs, labels, expected = VECTORS[case]
    declare(path)
    broker = path.broker
    async with running(path):
        reference = await kick_raw(broker, "plain", [1], {}, {})
        await reference.wait_result(timeout=20)
        first = await kick_raw(broker, "hostile", [{"n": 1}], {}, {})
        bad = await kick_raw(broker, "hostile", args, kwargs, labels)
        second = await kick_raw(broker, "hostile", [{"n": 2}], {}, {})
        good = [await t.wait_result(timeout=20) for t in (first, second)]
        result = await bad.wait_result(timeout=20)
    assert [r.return_value for r in good] == [[1, 2], [2, 2]]  # run together
    assert result.is_err
    assert type(result.error) is expected, result.error
    assert isinstance(result.error, BatchItemError)
    assert result.error.task_id == bad.task_id
    # taskiq's per-message order, as a failing plain task on this path.
    assert path.journal.names(bad.task_id) == path.journal.names(reference.task_id)


async def test_values_whose_comparison_raises_never_share_a_buffer(path: Path) -> None:
    declare(path)
    broker = path.broker
    async with running(path):
        odd = [
            await kick_raw(broker, "hostile", [{"n": n, "group": "ambiguous"}], {}, {})
            for n in (7, 8)
        ]
        good = [await kick_raw(broker, "hostile", [{"n": n}], {}, {}) for n in (1, 2)]
        assert [(await t.wait_result(timeout=20)).return_value for t in good] == [
            [1, 2],
            [2, 2],
        ]
        await path.batching.wait_buffered(2, "hostile", timeout=20)
        path.batching.flush()
        results = [await t.wait_result(timeout=20) for t in odd]
    # Each alone: their keys never compare equal, and never raise.
    assert [r.return_value for r in results] == [[7, 1], [8, 1]]


async def test_unknown_keyword_arguments_get_what_a_plain_task_gets(
    path: Path,
) -> None:
    broker = path.broker
    declare(path)

    @broker.task(task_name="plain_ok")
    async def plain_ok(item: Any) -> Any:
        return item

    async with running(path):
        plain = await kick_raw(broker, "plain_ok", [1], {"junk": 1}, {})
        batched = await kick_raw(broker, "hostile", [GOOD], {"junk": 1}, {})
        plain_error = (await plain.wait_result(timeout=20)).error
        batched_error = (await batched.wait_result(timeout=20)).error
    # Python refuses the call: a TypeError, for a plain task as for a batched one.
    assert isinstance(plain_error, TypeError)
    assert isinstance(batched_error, TypeError)
    assert isinstance(batched_error, BatchArgumentError)
    assert "unexpected keyword argument 'junk'" in str(batched_error)


class Login(BaseModel):
    """An item whose secrets its model hides from its repr."""

    user: int
    token: str = Field(repr=False)
    password: SecretStr


SECRETS = ("tok-SECRET-1", "pw-SECRET-2", "arg-SECRET-3")


async def test_no_value_of_an_invalid_message_in_logs_or_results(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = path.broker

    @batch_task(broker, task_name="logins", batch_size=1)
    async def logins(items: list[Login], scopes: dict[str, int] | None = None) -> int:
        return len(items)

    raw = {"user": "not-an-int", "token": SECRETS[0], "password": SECRETS[1]}
    caplog.set_level(logging.DEBUG)
    async with running(path):
        sent = [
            await kick_raw(broker, "logins", [raw], {}, {}),
            await kick_raw(broker, "logins", [{"token": SECRETS[0]}], {}, {}),
            await kick_raw(
                broker,
                "logins",
                [{**raw, "user": 1}],
                {"scopes": {"admin": SECRETS[2]}},
                {},
            ),
        ]
        errors = [(await t.wait_result(timeout=20)).error for t in sent]
    stored = [(str(e), repr(e.args)) for e in errors if e is not None]
    assert len(stored) == 3
    for secret in SECRETS:
        assert secret not in caplog.text
        assert secret not in repr(stored)
    # What the errors say instead: the message, the argument, the path, the type.
    assert stored[0][0].endswith(
        "was rejected: item does not fit items: 1 validation error(s): "
        "user: int_parsing"
    )
    assert sent[0].task_id in stored[0][0]
    assert "user: missing; password: missing" in stored[1][0]
    assert "argument 'scopes' is invalid" in stored[2][0]
    assert "admin: int_parsing" in stored[2][0]
    assert f"{sent[0].task_id} of batched task 'logins' was rejected" in caplog.text


async def test_values_are_shown_where_the_worker_opts_in() -> None:
    broker = InMemoryBroker(max_stored_results=-1).with_middlewares(
        BatchingMiddleware(error_values=True)
    )

    @batch_task(broker, task_name="logins", batch_size=1)
    async def logins(items: list[Login]) -> int:
        return len(items)

    await broker.startup()
    raw = {"user": "not-an-int", "token": SECRETS[0], "password": SECRETS[1]}
    task = await kick_raw(broker, "logins", [raw], {}, {})
    error = (await task.wait_result(timeout=20)).error
    await broker.shutdown()
    assert "input 'not-an-int'" in str(error)
    assert SECRETS[0] in str(error)  # the raw item, as sent
