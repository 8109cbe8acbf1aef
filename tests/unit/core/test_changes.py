"""``Changes``: waiters that give up are not kept until the next change."""

import asyncio

from taskiq_batching.core.changes import PRUNE_AT, Changes


async def test_cancelled_waiters_do_not_pile_up_while_nothing_changes() -> None:
    changes = Changes(lambda: None)
    for _ in range(10_000):  # an idle worker asking again and again
        changes.next().cancel()
    assert len(changes.waiters) <= PRUNE_AT


async def test_waiting_ones_are_kept_and_all_woken() -> None:
    changes = Changes(lambda: None)
    waiting = [changes.next() for _ in range(3 * PRUNE_AT)]
    for _ in range(1_000):
        changes.next().cancel()
    assert len(changes.waiters) <= 2 * len(waiting) + PRUNE_AT
    changes.notify()
    await asyncio.sleep(0)
    assert all(future.done() and not future.cancelled() for future in waiting)
