"""Producer-side mapping: ``await task.map(items, chunk_size=N, kill_switch=...)``.

Items are sent in chunks (each with ``kiq_many``); each chunk's results
are awaited before the next chunk is sent, and sending stops when the
kill switch trips. Every item gets an entry in input order: its result,
or ``NotSent`` when sending stopped before its chunk.
"""

import datetime
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from taskiq import AsyncTaskiqTask, TaskiqResult

from taskiq_batching.errors import BatchConfigError
from taskiq_batching.validation import count, seconds

#: Items per chunk of ``map`` by default.
DEFAULT_CHUNK_SIZE = 100

#: Sends a chunk of items and returns their tasks (``kiq_many``).
SendChunk = Callable[[Sequence[Any]], Awaitable[Sequence[AsyncTaskiqTask[Any]]]]


@dataclass(frozen=True, slots=True)
class NotSent:
    """The entry of an item that was never sent: the kill switch tripped first.

    :param index: the item's position in the input.
    :param reason: why sending stopped (the kill switch's description).
    """

    index: int
    reason: str


@dataclass(frozen=True, slots=True)
class MapOptions:
    """How ``map`` sends (see ``BatchingDecoratedTask.map``)."""

    chunk_size: int = DEFAULT_CHUNK_SIZE
    kill_switch: "KillSwitch | None" = None
    timeout: float | datetime.timedelta | None = None
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] | None = None


class KillSwitch(Protocol):
    """Decides, after each chunk, whether to stop sending."""

    def tripped(self, results: Sequence[TaskiqResult[Any]]) -> str | None:
        """Look at every result so far; say why to stop, or None to go on.

        :param results: the results of every chunk sent so far, in order.
        """


@dataclass(frozen=True, slots=True)
class AnyFailed:
    """Stop after a chunk in which any item failed."""

    def tripped(self, results: Sequence[TaskiqResult[Any]]) -> str | None:
        """Trip on the first failure (see ``KillSwitch``)."""
        failed = sum(1 for result in results if result.is_err)
        return f"{failed} item(s) failed" if failed else None


@dataclass(frozen=True, slots=True)
class CountExceeded:
    """Stop once more than ``count`` items have failed.

    :param count: failures tolerated.
    """

    count: int

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int):
            raise BatchConfigError(
                f"CountExceeded: count must be an int >= 0 (failures), got "
                f"{self.count!r}."
            )
        if self.count < 0:
            raise BatchConfigError(
                f"CountExceeded: count must be >= 0 (failures), got {self.count!r}."
            )

    def tripped(self, results: Sequence[TaskiqResult[Any]]) -> str | None:
        """Trip past ``count`` failures (see ``KillSwitch``)."""
        failed = sum(1 for result in results if result.is_err)
        if failed > self.count:
            return f"{failed} item(s) failed, more than {self.count}"
        return None


@dataclass(frozen=True, slots=True)
class RateExceeded:
    """Stop once the share of failed items exceeds ``ratio``.

    :param ratio: failures over results tolerated, 0 to 1.
    :param min_count: results needed before the ratio is judged.
    """

    ratio: float
    min_count: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not (
            isinstance(self.ratio, (int, float)) and 0 <= self.ratio <= 1
        ):
            raise BatchConfigError(
                f"RateExceeded: ratio must be a number from 0 to 1 (failed / "
                f"done), got {self.ratio!r}."
            )
        count("RateExceeded", "min_count", self.min_count, "results")

    def tripped(self, results: Sequence[TaskiqResult[Any]]) -> str | None:
        """Trip past the failure ratio (see ``KillSwitch``)."""
        if len(results) < self.min_count:
            return None
        failed = sum(1 for result in results if result.is_err)
        if failed / len(results) > self.ratio:
            return (
                f"{failed} of {len(results)} item(s) failed, more than {self.ratio:.0%}"
            )
        return None


async def map_items(
    send: SendChunk,
    items: Iterable[Any],
    chunk_size: int,
    kill_switch: KillSwitch | None,
    timeout: float | datetime.timedelta | None,
) -> list[TaskiqResult[Any] | NotSent]:
    """Send items chunk by chunk, waiting for each chunk's results.

    :param send: sends one chunk (``kiq_many``).
    :param items: the items, one message each.
    :param chunk_size: items per chunk (an int >= 1).
    :param kill_switch: stops sending when it trips; None: send everything.
    :param timeout: seconds to wait for each result (None: no limit).
    :raises BatchConfigError: when ``chunk_size`` or ``timeout`` is invalid.
    :return: each item's result, or ``NotSent``, in input order.
    """
    size = count("map", "chunk_size", chunk_size, "items per chunk")
    wait = -1.0 if timeout is None else seconds("map", "timeout", timeout)
    pending = list(items)
    done: list[TaskiqResult[Any]] = []
    for start in range(0, len(pending), size):
        sent = await send(pending[start : start + size])
        done.extend(
            [await task.wait_result(check_interval=0.05, timeout=wait) for task in sent]
        )
        reason = None if kill_switch is None else kill_switch.tripped(done)
        if reason is not None:
            unsent = range(start + size, len(pending))
            return [*done, *(NotSent(index, reason) for index in unsent)]
    return list(done)
