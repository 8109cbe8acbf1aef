"""Making ``taskiq worker`` notice SIGTERM/SIGINT at once.

The CLI's signal handler sets the Receiver's shutdown event from a
signal handler without waking the event loop, so a worker idling in a
blocking read (a Redis stream read blocks 2 s by default) only notices
when that read returns. The handler is chained so that it also wakes the
loop.
"""

import asyncio
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any


def install_signal_wakeup() -> None:
    """Make SIGTERM/SIGINT/SIGHUP also wake the event loop.

    Chains whatever handler is installed (the ``taskiq worker`` one), so
    its shutdown event is seen at once, not after the next blocking read.
    Does nothing outside the main thread.
    """
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if signum is None:
            continue
        previous = signal.getsignal(signum)
        if not callable(previous) or getattr(previous, "taskiq_batching_wakeup", False):
            continue
        try:
            signal.signal(signum, _chained(previous, loop))
        except ValueError:  # not the main thread
            return


def _chained(
    previous: Callable[[int, FrameType | None], Any],
    loop: asyncio.AbstractEventLoop,
) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        try:
            previous(signum, frame)
        finally:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake)

    handler.taskiq_batching_wakeup = True  # type: ignore[attr-defined]
    return handler


def _wake() -> None:
    """Nothing to do: being scheduled is what wakes the loop."""
