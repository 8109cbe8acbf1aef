"""Changes: the event loop a batcher's state belongs to, and who waits on it.

A module-level broker may serve several event loops in turn (one per
test, say): asyncio objects of one loop cannot be used in another, so the
state of an earlier loop is dropped when another one first uses it.
Whoever waits for a change (room for a message, a batch finished) waits
on a future of the current loop, resolved by the next ``notify``.
"""

import asyncio
from collections.abc import Callable

#: Waiters kept before the cancelled ones are dropped (then twice the
#: waiting ones, so that dropping stays linear in the calls).
PRUNE_AT = 64


class Changes:
    """Binds to the running event loop and wakes whoever waits for a change.

    :param on_new_loop: drops the state of an earlier loop; called when a
        loop other than the first one binds.
    """

    def __init__(self, on_new_loop: Callable[[], None]) -> None:
        self.on_new_loop = on_new_loop
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Futures of whoever waits for the next change.
        self.waiters: list[asyncio.Future[None]] = []
        self._prune_at = PRUNE_AT

    def __bool__(self) -> bool:
        """Whether anyone waits for the next change."""
        return bool(self.waiters)

    def bind_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop; state left from a closed earlier loop is dropped.

        :return: the running loop.
        """
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return loop
        first, self._loop = self._loop is None, loop
        if not first:
            self.waiters.clear()
            self.on_new_loop()
        return loop

    def next(self) -> "asyncio.Future[None]":
        """A future resolved at the next change.

        :return: the future.
        """
        future = self.bind_loop().create_future()
        if len(self.waiters) >= self._prune_at:
            # Waiters that gave up (cancelled) are dropped here, not only at
            # the next change: a worker with nothing to do may ask many times.
            self.waiters = [one for one in self.waiters if not one.done()]
            self._prune_at = max(PRUNE_AT, 2 * len(self.waiters))
        self.waiters.append(future)
        return future

    def notify(self) -> None:
        """Wake whoever waits for a change."""
        waiters, self.waiters = self.waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)
