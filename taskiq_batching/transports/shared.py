"""Helpers every transport's reading or sending side may use, written once.

Sending with the broker's own ``kick`` (``kick_each``), calling the acks
a broker hands out (``ack_each``), acking what was just sent again
(``acked_after_resend``, for a transport's ``requeue``), and cancelling a
read until the cancellation takes (``cancel_until_done``).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from taskiq import AsyncBroker, BrokerMessage
from taskiq.utils import maybe_awaitable

from taskiq_batching.error_texts import describe
from taskiq_batching.errors import SendManyError

logger = logging.getLogger("taskiq_batching")

#: Messages ``kick_each`` hands to ``kick`` at once.
SEND_CONCURRENCY = 100


async def kick_each(
    broker: AsyncBroker,
    messages: Sequence[BrokerMessage],
    kick: Callable[[BrokerMessage], Awaitable[None]] | None = None,
    concurrency: int = SEND_CONCURRENCY,
) -> None:
    """Send messages with the broker's own ``kick``, some at once, none twice.

    A kick that fails is not tried again (it may have reached the broker),
    and no later chunk is sent; the caller is told which messages are not
    sent, and which may or may not be.

    :param broker: the broker.
    :param messages: formatted messages.
    :param kick: what sends one (the broker's ``kick`` by default).
    :param concurrency: messages sent at once.
    :raises SendManyError: a kick failed.
    """
    kick = kick or broker.kick
    for start in range(0, len(messages), concurrency):
        chunk = messages[start : start + concurrency]
        outcomes = await asyncio.gather(
            *(kick(message) for message in chunk), return_exceptions=True
        )
        failed = [
            (start + index, outcome)
            for index, outcome in enumerate(outcomes)
            if isinstance(outcome, BaseException)
        ]
        if failed:
            raise SendManyError(
                describe(failed[0][1]),
                [message.task_id for message in messages],
                list(range(start + len(chunk), len(messages))),
                [position for position, _ in failed],
            ) from failed[0][1]


async def ack_each(handles: Sequence[Any]) -> None:
    """Call ack callables concurrently; raise the first failure after all ran.

    :param handles: ack callables (sync or async).
    :raises Exception: the first ack that failed.
    """

    async def one(ack: Any) -> None:
        await maybe_awaitable(ack())

    outcomes = await asyncio.gather(
        *(one(ack) for ack in handles), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


async def acked_after_resend(
    ack: Callable[[Sequence[Any]], Awaitable[None]], handles: Sequence[Any]
) -> None:
    """Ack deliveries whose messages were just sent again; a failure is logged.

    The copies are in the queue: keeping the originals too would run them
    twice for sure. Unacked, the broker delivers them again (at least once).

    :param ack: the transport's ``ack``.
    :param handles: the deliveries' handles.
    """
    if not handles:
        return
    try:
        await ack(handles)
    except Exception as exc:
        logger.error(
            "taskiq_batching: %d message(s) given back to the tail of the queue "
            "could not be acked (%s): the broker delivers them again, so they "
            "may run twice",
            len(handles),
            describe(exc),
        )


async def cancel_until_done(task: "asyncio.Future[Any]", retry_seconds: float) -> None:
    """Cancel a task, again every ``retry_seconds`` while it runs, until it ends.

    A cancellation may be lost: Python 3.11's ``asyncio.wait_for``, around
    which redis-py sends each command, drops one that arrives as the send
    completes, and the command (a blocking read) then runs to its end.

    :param task: the task (a read in progress).
    :param retry_seconds: how long one cancellation is given to take.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_seconds)
