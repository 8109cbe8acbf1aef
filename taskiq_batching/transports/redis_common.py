"""What the Redis transports share: a client per kind of broker, and retrying.

A standalone broker's client takes connections from the broker's pool; a
sentinel broker's asks its sentinels for the master (``master_for``); a
cluster broker's is the broker's own ``RedisCluster``. A read that fails
because the server is away is retried in place, waiting longer each time.
"""

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskiq_batching.error_texts import describe
from taskiq_batching.transports.shared import cancel_until_done

logger = logging.getLogger("taskiq_batching")

#: Errors after which a read is tried again, the server being back soon.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, OSError)
#: Seconds before the first retry of a failed read; doubled up to the max.
RETRY_DELAY = 0.1
RETRY_DELAY_MAX = 5.0
#: Seconds between repeated cancellations of a redis-py command.
CANCEL_RETRY_INTERVAL = 0.05


async def cancel(task: "asyncio.Future[Any]") -> None:
    """Cancel a task running redis-py commands, and wait for it to end.

    The cancellation is repeated until it takes (``cancel_until_done``).
    Cancelling a redis-py command only closes its connection, so
    repeating is harmless.

    :param task: the task.
    """
    await cancel_until_done(task, CANCEL_RETRY_INTERVAL)


def reached_through(obj: Any, pool: str) -> str:
    """How a taskiq-redis broker or result backend reaches Redis.

    taskiq-redis's classes share no base that says it: a standalone one
    keeps a connection pool, a sentinel one its ``sentinel``, a cluster
    one its ``redis`` client (and no pool).

    :param obj: a broker or a result backend.
    :param pool: the name of its pool attribute (a broker's
        ``connection_pool``, a backend's ``redis_pool``).
    :return: ``"cluster"``, ``"sentinel"`` or ``"pool"``.
    """
    if hasattr(obj, "redis") and not hasattr(obj, pool):
        return "cluster"
    return "sentinel" if hasattr(obj, "sentinel") else "pool"


class RedisClient:
    """The client a transport sends its commands with.

    :param broker: a taskiq-redis broker (standalone, sentinel or cluster).
    """

    def __init__(self, broker: Any) -> None:
        kind = reached_through(broker, "connection_pool")
        self.cluster = kind == "cluster"
        #: The client this package opened, closed by ``shutdown`` (sentinel only).
        self._owned: Any = None
        if self.cluster:
            self.redis: Any = broker.redis
        elif kind == "sentinel":
            self.redis = self._owned = broker.sentinel.master_for(broker.master_name)
        else:
            self.redis = Redis(connection_pool=broker.connection_pool)
        #: Whether this client's user may not run scripts (no ``@scripting``):
        #: ``redis_send`` then sends transactions.
        self.scripts_refused = False
        self._delay = RETRY_DELAY
        self._failing = False

    async def close(self) -> None:
        """Nothing to close yet: a client of ours is closed at the broker's shutdown.

        The worker stops reading before taskiq's Receiver has finished the
        callbacks of plain tasks, which still ack through this client.
        """

    async def shutdown(self) -> None:
        """Close the client this package opened, if any (the broker shuts down).

        ``BatchingMiddleware.shutdown`` calls it, after the Receiver has
        finished its callbacks and the buffers were drained.
        """
        owned, self._owned = self._owned, None
        if owned is not None:
            await owned.aclose()

    def recovered(self) -> None:
        """A command succeeded: say so once, after failures."""
        if self._failing:
            logger.warning("taskiq_batching: Redis answers again")
        self._failing = False
        self._delay = RETRY_DELAY

    async def pause_after(self, error: BaseException, what: str) -> None:
        """Wait before retrying a failed command, longer each time.

        :param error: what failed.
        :param what: the command, for the log line.
        """
        logger.warning(
            "taskiq_batching: %s failed (%s); retrying in %g s",
            what,
            describe(error),
            self._delay,
        )
        self._failing = True
        await asyncio.sleep(self._delay)
        self._delay = min(2 * self._delay, RETRY_DELAY_MAX)
