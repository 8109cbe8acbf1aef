"""Producer-side mapping: ``await task.map(items, chunk_size=N, kill_switch=...)``.

Items are sent in chunks (each with ``kiq_many``); each chunk's results
are awaited before the next chunk is sent, and sending stops when the
kill switch trips or a result does not come in time. Every item gets an
entry in input order: its result; ``NotFinished`` when it was sent but
its result did not come; ``NotSent`` when sending stopped before its
chunk. So what did not run can be sent again, and nothing that finished
is lost.
"""

import datetime
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from taskiq import AsyncTaskiqDecoratedTask, AsyncTaskiqTask, TaskiqResult
from taskiq.exceptions import TaskiqResultTimeoutError
from taskiq.result_backends.dummy import DummyResultBackend

from taskiq_batching.error_texts import describe
from taskiq_batching.errors import (
    BatchConfigError,
    KillSwitchTypeError,
    ResultBackendMissingError,
)
from taskiq_batching.producer import send_many
from taskiq_batching.validation import count, seconds

#: Items per chunk of ``map`` by default.
DEFAULT_CHUNK_SIZE = 100

#: Sends a chunk of items and returns their tasks (``kiq_many``).
SendChunk = Callable[[Sequence[Any]], Awaitable[Sequence[AsyncTaskiqTask[Any]]]]


@dataclass(frozen=True, slots=True)
class NotSent:
    """The entry of an item that was never sent: the map stopped first.

    It stops when the kill switch trips, or when a result of the chunk
    before did not come (see ``NotFinished``).

    :param index: the item's position in the input.
    :param reason: why sending stopped (the kill switch's description).
    """

    index: int
    reason: str


@dataclass(frozen=True, slots=True)
class NotFinished:
    """The entry of an item that was sent but whose result did not come.

    Its result did not come within ``map``'s ``timeout`` (a worker died,
    or is slow), or could not be read. The message may still run later:
    ``task_id`` finds its result then.

    :param index: the item's position in the input.
    :param task_id: the message's task_id.
    :param reason: why it has no result.
    """

    index: int
    task_id: str
    reason: str


#: What ``map`` returns for each item.
MapEntry = TaskiqResult[Any] | NotSent | NotFinished


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


async def map_task(
    task: AsyncTaskiqDecoratedTask[Any, Any],
    items: Iterable[Any],
    options: MapOptions,
) -> list[MapEntry]:
    """``map`` of a batched task (see ``BatchingDecoratedTask.map``).

    :raises ResultBackendMissingError: when the broker keeps no results.
    """
    if isinstance(task.broker.result_backend, DummyResultBackend):
        raise ResultBackendMissingError(task.task_name, type(task.broker).__name__)
    args = tuple(options.args)
    kwargs = dict(options.kwargs or {})

    async def send(chunk: Sequence[Any]) -> Sequence[AsyncTaskiqTask[Any]]:
        return await send_many(task.kicker(), chunk, args, kwargs)

    return await map_items(
        send, items, options.chunk_size, options.kill_switch, options.timeout
    )


async def map_items(
    send: SendChunk,
    items: Iterable[Any],
    chunk_size: int,
    kill_switch: KillSwitch | None,
    timeout: float | datetime.timedelta | None,
) -> list[MapEntry]:
    """Send items chunk by chunk, waiting for each chunk's results.

    A result that does not come within ``timeout`` stops the map: the
    results of its chunk that came are kept, the others are
    ``NotFinished``, and later chunks are ``NotSent``.

    :param send: sends one chunk (``kiq_many``).
    :param items: the items, one message each.
    :param chunk_size: items per chunk (an int >= 1).
    :param kill_switch: stops sending when it trips; None: send everything.
    :param timeout: seconds to wait for each result (None: no limit).
    :raises BatchConfigError: when ``chunk_size`` or ``timeout`` is invalid.
    :raises KillSwitchTypeError: when ``kill_switch`` is not a kill switch.
    :return: each item's result, ``NotFinished`` or ``NotSent``, in input order.
    """
    size = count("map", "chunk_size", chunk_size, "items per chunk")
    wait = -1.0 if timeout is None else seconds("map", "timeout", timeout)
    switch = _kill_switch(kill_switch)
    pending = list(items)
    entries: list[MapEntry] = []
    done: list[TaskiqResult[Any]] = []
    for start in range(0, len(pending), size):
        sent = await send(pending[start : start + size])
        chunk, missing = await _collect(sent, start, wait)
        entries.extend(chunk)
        done.extend(entry for entry in chunk if isinstance(entry, TaskiqResult))
        reason = missing or (None if switch is None else switch.tripped(done))
        if reason is not None:
            unsent = range(start + size, len(pending))
            return [*entries, *(NotSent(index, reason) for index in unsent)]
    return entries


def _kill_switch(kill_switch: object) -> KillSwitch | None:
    """The kill switch, checked before anything is sent."""
    if kill_switch is None:
        return None
    if isinstance(kill_switch, type):
        raise KillSwitchTypeError(
            f"the class {kill_switch.__name__} (give an instance: "
            f"{kill_switch.__name__}(...))"
        )
    if not callable(getattr(kill_switch, "tripped", None)):
        raise KillSwitchTypeError(f"{kill_switch!r} ({type(kill_switch).__name__})")
    return kill_switch  # type: ignore[return-value]


async def _collect(
    sent: Sequence[AsyncTaskiqTask[Any]],
    start: int,
    wait: float,
) -> tuple[list[MapEntry], str | None]:
    """A chunk's entries, and why the map must stop (None: go on).

    Results are awaited in order, each up to ``wait`` seconds; after one
    does not come, the rest of the chunk is looked at once, not awaited.
    """
    entries: list[MapEntry] = []
    missing: str | None = None
    for index, task in enumerate(sent, start):
        if missing is not None:
            entries.append(await _if_ready(task, index, missing))
            continue
        try:
            entries.append(await task.wait_result(check_interval=0.05, timeout=wait))
            continue
        except TaskiqResultTimeoutError:
            why = f"did not come within {wait:g} s"
        # Whatever the backend raises, the results already read are kept.
        except Exception as exc:
            why = f"could not be read: {_describe(exc)}"
        entries.append(NotFinished(index, task.task_id, f"its result {why}"))
        missing = f"map stopped: the result of item {index} {why}"
    return entries, missing


async def _if_ready(task: AsyncTaskiqTask[Any], index: int, why: str) -> MapEntry:
    """An item's result if it is there now, else ``NotFinished``."""
    try:
        if await task.is_ready():
            return await task.get_result()
    except Exception as exc:  # as in ``_collect``: keep what was read
        why = f"{why}; then reading its own result failed: {_describe(exc)}"
    return NotFinished(index, task.task_id, why)


def _describe(error: Exception) -> str:
    # taskiq wraps a backend's error in one whose text hides it.
    cause = error.__cause__
    return f"{describe(error)} ({describe(cause)})" if cause else describe(error)
