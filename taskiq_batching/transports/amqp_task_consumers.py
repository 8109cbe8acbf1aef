"""RabbitMQ: consuming the batched tasks' queues, past the race of their creation.

A single-active-consumer quorum queue that another process declared an
instant earlier can exist before its Raft member runs. RabbitMQ (3.10.8
here) then answers ``basic.consume`` by crashing the channel
(``{badmatch,{error,noproc}}`` in ``rabbit_quorum_queue:consume/3``, where
it asks that member which consumer is active) and closes the whole
connection: ``Connection.Close(reply_code=541, reply_text='INTERNAL_ERROR')``
(aiormq's ``ConnectionInternalError``). The declare itself succeeds: the
queue's record is there. Measured (4 declarers of one new queue at once,
each on its own connection, 30 queues): 12 of 30 queues met it, always at
``basic.consume``, never after its ``consume-ok``.

So the task queues are consumed on a connection of their own, made like
the broker's read connection (``amqp_connect_like_reader``), not on that
connection: the race then closes only this one, and the main queue's
consumer and what it holds are not touched. When it happens, the
consumers started on the closed connection are forgotten (the transport
no longer cancels them; their deliveries' channel is closed, so a batch
holding them does not start, and RabbitMQ delivers them again), and after
a short wait (``RETRY_DELAYS``: 50 ms doubling, at most six times, about
3 s in all: the member starts within milliseconds) every task queue is
consumed again on a new connection, logged once. Any other error, or the
race still there after the last wait, is raised as before (the worker
process restarts).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiormq.exceptions import ConnectionInternalError

logger = logging.getLogger("taskiq_batching")

#: Waits before consuming again after the race, in seconds (one per try).
RETRY_DELAYS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)

#: Starts every task queue's consumer on a connection, appending each
#: started consumer's tag to the list as it goes.
Setup = Callable[[Any, list[str]], Awaitable[None]]
#: Drops consumers (by tag) from the transport's: their connection closed.
Forget = Callable[[Sequence[str]], None]


class TaskConsumers:
    """The connection the batched tasks' queues are consumed on.

    :param connect: makes a connection (``amqp_connect_like_reader``).
    """

    def __init__(self, connect: Callable[[], Awaitable[Any]]) -> None:
        self._connect = connect
        #: The current connection (None before ``start`` and after ``close``).
        self.connection: Any = None

    async def start(self, setup: Setup, forget: Forget) -> None:
        """Run ``setup`` on a new connection, again while it meets the race.

        :param setup: starts the consumers (see ``Setup``).
        :param forget: told the consumers lost with a closed connection.
        :raises Exception: whatever ``setup`` raised, other than the race,
            or the race after the last of ``RETRY_DELAYS``.
        """
        for tries, delay in enumerate((*RETRY_DELAYS, None)):
            self.connection = await self._connect()
            started: list[str] = []
            try:
                await setup(self.connection, started)
                return
            except ConnectionInternalError as exc:
                if delay is None:
                    raise
                forget(started)
                await self._drop()
                if tries == 0:
                    logger.warning(
                        "taskiq_batching: RabbitMQ closed the connection of the "
                        "batched tasks' queues at basic.consume (%s): a queue "
                        "another worker has just declared is not ready yet; "
                        "consuming again on a new connection",
                        exc,
                    )
                await asyncio.sleep(delay)

    async def _drop(self) -> None:
        connection, self.connection = self.connection, None
        try:
            # A robust connection would otherwise reconnect on its own.
            await connection.close()
        except Exception as exc:  # already closed by the server: nothing left
            logger.debug("taskiq_batching: closing a closed connection: %r", exc)

    async def close(self) -> None:
        """Close the connection (after the acks are written)."""
        if self.connection is not None:
            await self._drop()
