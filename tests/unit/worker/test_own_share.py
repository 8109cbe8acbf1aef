"""A worker's own share of a task's rate (``worker/own_share.py``): forwarded
only while this worker's reads would not fill its batches; unit rules here,
the worker's use of them in ``test_taking.py``, RabbitMQ's (whose forwarder
asks for them) in ``tests/integration/test_amqp_own_share.py``.
"""

from taskiq_batching.core.analysis import analyse
from taskiq_batching.settings import BatchSettings
from taskiq_batching.spec import BatchSpec
from taskiq_batching.worker.own_share import OwnShare


async def collect(items: list[int]) -> None: ...


def share(batch_size: int, batch_timeout: float | None) -> OwnShare:
    settings = BatchSettings(batch_size=batch_size, batch_timeout=batch_timeout)
    return OwnShare(BatchSpec("collect", settings, analyse("collect", collect), None))


def test_a_batch_s_worth_of_reads_within_the_timeout_is_batched_where_read() -> None:
    own = share(4, 1.0)
    assert [own.read(t) for t in (0.0, 0.1, 0.2)] == [False, False, False]
    assert own.read(0.3)  # the fourth within 1 s
    assert own.read(0.35)


def test_reads_spread_wider_than_the_timeout_are_forwarded() -> None:
    own = share(4, 1.0)
    # Four reads, but never four within one second of each other.
    assert not any(own.read(t) for t in (0.0, 0.4, 0.8, 1.2, 1.6, 2.0))


def test_it_stays_in_place_down_to_half_a_batch_then_forwards_again() -> None:
    own = share(4, 1.0)
    for t in (0.0, 0.1, 0.2, 0.3):
        own.read(t)
    # Two (half a batch) within the last second: it stays.
    assert own.read(1.25)
    # Then only this one within the second before it: forwarded again.
    assert not own.read(2.3)
    # And it takes a whole batch again to come back.
    assert [own.read(t) for t in (2.4, 2.5)] == [False, False]
    assert own.read(2.6)


def test_a_task_without_a_timeout_is_always_forwarded() -> None:
    own = share(2, None)
    assert not any(own.read(0.0) for _ in range(10))
