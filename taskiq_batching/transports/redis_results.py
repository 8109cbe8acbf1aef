"""taskiq-redis's result backends, written many results per round trip.

Each result is encoded exactly as the backend's ``set_result`` encodes it
(its serializer, over ``model_dump(mode="json")``), once per distinct
result object, and stored under the backend's key for its task_id with
the backend's expiry, as ``set_result`` stores it: ``SET key value EX
result_ex_time`` (or ``PX result_px_time``), or one ``MSET`` of every key
when results never expire (the same keys and values, in one command).

The commands are packed by hand and sent in one round trip
(``redis_wire``), their replies read by redis-py's C parser (hiredis, in
the ``[redis]`` extra; without it the registry picks the generic writer):
cheap for the worker, and the cheapest for the server, which runs no
script. A cluster gets a redis-py pipeline (its keys span slots). A
result that cannot be encoded is reported alone; a write that fails
reports each of its results.
"""

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from taskiq import AsyncResultBackend, TaskiqResult
from taskiq_redis import (
    RedisAsyncClusterResultBackend,
    RedisAsyncResultBackend,
    RedisAsyncSentinelResultBackend,
)

from taskiq_batching._compat import redis_result_keys
from taskiq_batching._compat.redis_py import string_encoding
from taskiq_batching.transports.redis_common import reached_through
from taskiq_batching.transports.redis_wire import bulk, round_trip

_WRITERS = (
    RedisAsyncResultBackend.set_result,
    RedisAsyncSentinelResultBackend.set_result,
    RedisAsyncClusterResultBackend.set_result,
)

#: (index of the result, key, encoded value)
Row = tuple[int, str, bytes]


def results_for(backend: AsyncResultBackend[Any]) -> "RedisResults | None":
    """The writer for taskiq-redis result backends that store as shipped.

    :param backend: any result backend.
    :return: the writer, or None for other backends.
    """
    if type(backend).set_result in _WRITERS:
        return RedisResults(backend)
    return None


class RedisResults:
    """Writes results the way a taskiq-redis result backend does, in bulk.

    :param backend: the result backend.
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._redis: Any = None
        self._kind = reached_through(backend, "redis_pool")
        #: Whether they are packed by hand into one round trip (not on a
        #: cluster, whose keys span slots: a pipeline there).
        self.wired = self._kind != "cluster"

    def _client(self) -> Any:
        if self._redis is None:
            backend = self.backend
            if self._kind == "pool":
                self._redis = Redis(connection_pool=backend.redis_pool)
            elif self._kind == "sentinel":
                self._redis = backend.sentinel.master_for(backend.master_name)
            else:
                self._redis = backend.redis
        return self._redis

    async def write(
        self, results: Sequence[tuple[str, TaskiqResult[Any]]]
    ) -> list[tuple[int, BaseException]]:
        """Store each result (see ``ResultWriter.write``)."""
        backend = self.backend
        failures: list[tuple[int, BaseException]] = []
        encoded: dict[int, bytes] = {}
        rows: list[Row] = []
        keys = redis_result_keys(backend, [task_id for task_id, _ in results])
        for index, (_, result) in enumerate(results):
            value = encoded.get(id(result))
            if value is None:
                try:
                    value = backend.serializer.dumpb(result.model_dump(mode="json"))
                except Exception as exc:
                    failures.append((index, exc))
                    continue
                encoded[id(result)] = value
            rows.append((index, keys[index], value))
        if rows:
            try:
                failures.extend(await self._set_all(rows))
            except Exception as exc:
                failures.extend((index, exc) for index, _, _ in rows)
        return sorted(failures, key=lambda failure: failure[0])

    async def _set_all(self, rows: list[Row]) -> list[tuple[int, BaseException]]:
        """Write the rows; the failures of single keys (others raise)."""
        ex = self.backend.result_ex_time
        px = None if ex else self.backend.result_px_time
        if self.wired:
            return await self._set_by_wire(rows, ex, px)
        async with self._client().pipeline(transaction=False) as pipe:
            for _, key, value in rows:
                pipe.set(key, value, ex=ex or None, px=px or None)
            await pipe.execute()
        return []

    async def _set_by_wire(
        self, rows: list[Row], ex: int | None, px: int | None
    ) -> list[tuple[int, BaseException]]:
        """One round trip: an MSET, or a SET with the expiry per key."""
        redis = self._client()
        # Keys are str: encoded as redis-py would encode them.
        charset, errors = string_encoding(redis)
        values: dict[int, bytes] = {}  # each distinct value as RESP, once
        pairs: list[bytes] = []  # each command (or key and value), as RESP
        last: bytes | None = None  # a batch's results mostly share one value
        packed = b""
        expires = bool(ex or px)
        expiry = b""  # SET key value EX|PX amount: after each value
        if expires:
            option, amount = (b"EX", ex) if ex else (b"PX", px)
            expiry = bulk(option) + bulk(str(amount).encode())
        for _, key, value in rows:
            if value is not last:
                packed = values.get(id(value)) or values.setdefault(
                    id(value), bulk(value) + expiry
                )
                last = value
            name = key.encode(charset, errors)
            # The command (or pair) in one step: it runs for every result.
            pairs.append(b"$%d\r\n%s\r\n%s" % (len(name), name, packed))
        if not expires:
            head = b"*%d\r\n$4\r\nMSET\r\n" % (1 + 2 * len(rows))
            (reply,) = await round_trip(redis, [head, *pairs], 1)
            if isinstance(reply, ResponseError):
                raise reply
            return []
        # Each SET's head is the same: joined in, not added to each command.
        head = b"*5\r\n$3\r\nSET\r\n"
        replies = await round_trip(redis, [head, head.join(pairs)], len(pairs))
        return [
            (rows[index][0], reply)
            for index, reply in enumerate(replies)
            if type(reply) is not bytes and isinstance(reply, ResponseError)
        ]
