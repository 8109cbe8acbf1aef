"""The tests' own clean-up of the shared Redis (tests/redis_keys.py)."""

import fakeredis
import pytest

from tests.redis_keys import forget_queue


def test_a_queues_keys_go_and_other_queues_stay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    monkeypatch.setattr(
        "tests.redis_keys.SyncRedis.from_url",
        lambda url, **kwargs: fakeredis.FakeRedis(server=server),
    )
    mine = [
        "tb-it-1",  # the stream
        "tb-it-1:0f02",  # a result
        "tb-it-1:taskiq-batching-last:taskiq",
        "tb-it-1-extra",  # a second queue named after it
        "{tb-it-1:batched}:wake",  # where a task's batches wait
        "{tb-it-1}:taskiq-batching:sent:ab:0",  # a producer's mark
    ]
    others = ["tb-it-2", "tb-it-2:0f02", "{tb-it-2:batched}:wake", "x-tb-it-1"]
    for key in mine + others:
        client.set(key, 1)
    assert forget_queue("redis://unused", "tb-it-1") == len(mine)
    assert sorted(client.keys()) == sorted(key.encode() for key in others)


def test_an_unreachable_redis_has_nothing_to_delete() -> None:
    assert forget_queue("redis://127.0.0.1:1/0", "tb-it-1") == 0
