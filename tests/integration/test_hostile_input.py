"""Hostile messages to a real ``taskiq worker``: each fails alone, the process lives.

On the Redis stream and on RabbitMQ, a worker of ``hostile_app`` gets good
messages, plain ones, undecodable bytes and each crash vector found in
issue 17, interleaved. The good ones run (in batches with each other), the
plain ones too, each hostile one gets its error under its task_id, the
undecodable ones are dropped as taskiq drops them, and the worker process
is the one that started (no crash, no restart).
"""

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.hostile_vectors import CRASHED_A_WORKER
from tests.hostile_vectors import VECTORS as HOSTILE
from tests.integration.hostile import KINDS, Target, body, hostile_worker, raw
from tests.integration.workers import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


#: name: (args, kwargs, labels, the error type's name)
VECTORS = {
    name: (*HOSTILE[name][:3], HOSTILE[name][3].__name__) for name in CRASHED_A_WORKER
}


@pytest.mark.parametrize("kind", KINDS)
async def test_hostile_messages_fail_alone_and_the_worker_lives(
    kind: str, redis_url: str, rabbitmq_url: str, tmp_path: Path
) -> None:
    queue = f"tb-hostile-{uuid.uuid4().hex[:10]}"
    async with hostile_worker(
        kind, redis_url, rabbitmq_url, queue, tmp_path / "worker.log"
    ) as target:
        expected: dict[str, tuple[bool, Any]] = {}  # task_id: (is_err, value/type)
        for round_ in range(3):
            for n in range(10):
                await send(
                    target, expected, "hostile", [{"n": n}], {}, {}, (False, ["a", n])
                )
            for args, kwargs, labels, error in VECTORS.values():
                await send(
                    target, expected, "hostile", args, kwargs, labels, (True, error)
                )
            await send(target, expected, "plain", [round_], {}, {}, (False, round_))
            for junk in (b"\xff not json", b"[]", b'{"task_id": 1}'):
                await target.producer.kick(raw(uuid.uuid4().hex, "hostile", junk))
            # A good one with a deadline: its batch starts at once.
            await send(
                target,
                expected,
                "hostile",
                [{"n": 99}],
                {"tenant": "b"},
                {"batch_deadline": time.time()},
                (False, ["b", 99]),
            )
        seen = {}
        for task_id in expected:
            result = await target.result(task_id)
            seen[task_id] = (
                result.is_err,
                type(result.error).__name__ if result.is_err else result.return_value,
            )
        assert seen == expected
        await eventually(target.settled, 30, "every message acked or dropped")
        await target.assert_never_restarted()


async def send(
    target: Target,
    expected: dict[str, tuple[bool, Any]],
    task_name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    labels: dict[str, Any],
    outcome: tuple[bool, Any],
) -> None:
    task_id = uuid.uuid4().hex
    data = body(task_id, task_name, args, kwargs, labels)
    await target.producer.kick(raw(task_id, task_name, data))
    expected[task_id] = outcome
