"""Sending each message once: chunks, their marks' hash slots, and kick_each."""

import asyncio
import binascii
from typing import Any

import pytest
from taskiq import AsyncBroker, BrokerMessage

from taskiq_batching.errors import SendManyError
from taskiq_batching.transports.generic import SEND_CONCURRENCY, kick_each
from taskiq_batching.transports.redis_send import chunks, same_slot


def _slot(key: str) -> int:
    """Redis Cluster's slot of a key, hash tags included (its own definition)."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key.encode(), 0) % 16384


@pytest.mark.parametrize(
    "queue", ["taskiq", "a{tag}b", "a{b", "a}b", "{}x", "x{}y}z", "é{"]
)
def test_a_chunks_mark_lives_in_its_queues_slot(queue: str) -> None:
    assert _slot(same_slot(queue) + ":taskiq-batching:sent:x:0") == _slot(queue)


def _message(i: int, queue: str | None = None) -> BrokerMessage:
    labels = {} if queue is None else {"queue_name": queue}
    return BrokerMessage(task_id=str(i), task_name="t", message=b"m", labels=labels)


def test_chunks_group_by_queue_keep_order_and_have_distinct_marks() -> None:
    messages = [_message(0), _message(1, "other"), _message(2), _message(3)]
    parts = chunks(messages, "q", size=2)
    assert [(p.queue, p.positions) for p in parts] == [
        ("q", [0, 2]),
        ("q", [3]),
        ("other", [1]),
    ]
    assert len({p.mark for p in parts}) == 3
    assert (
        len({p.mark for p in chunks(messages, "q", size=2)} & {p.mark for p in parts})
        == 0
    )


class FlakyBroker(AsyncBroker):
    """Kicks fail for the task_ids given; every kick is recorded."""

    def __init__(self, failing: set[str]) -> None:
        super().__init__()
        self.failing = failing
        self.kicked: list[str] = []

    async def kick(self, message: BrokerMessage) -> None:
        self.kicked.append(message.task_id)
        await asyncio.sleep(0)
        if message.task_id in self.failing:
            raise ConnectionError("broker away")

    def listen(self) -> Any:
        raise NotImplementedError


async def test_kick_each_names_what_was_not_sent_and_kicks_nothing_twice() -> None:
    total = 2 * SEND_CONCURRENCY + 5
    broker = FlakyBroker({str(SEND_CONCURRENCY + 3)})
    messages = [_message(i) for i in range(total)]
    with pytest.raises(SendManyError) as raised:
        await kick_each(broker, messages)
    error = raised.value
    assert error.unknown == [SEND_CONCURRENCY + 3]
    assert error.not_sent == list(range(2 * SEND_CONCURRENCY, total))
    assert error.sent == [
        i for i in range(2 * SEND_CONCURRENCY) if i != SEND_CONCURRENCY + 3
    ]
    assert sorted(broker.kicked, key=int) == [
        str(i) for i in range(2 * SEND_CONCURRENCY)
    ]
    assert error.task_ids == [m.task_id for m in messages]
    rebuilt = SendManyError(*error.args)  # as a result backend rebuilds it
    assert (rebuilt.not_sent, rebuilt.unknown) == (error.not_sent, error.unknown)
    assert "broker away" in str(error)
