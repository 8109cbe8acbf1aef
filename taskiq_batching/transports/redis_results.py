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
script. As it runs for every message, nothing is done per result in
Python: keys are encoded and the commands joined by C loops (``map``,
``bytes.join``), keys named as taskiq-redis names them (its prefix and
the task_id) without a call per key. A cluster gets a redis-py pipeline
(its keys span slots). A result that cannot be encoded is reported
alone; a write that fails reports each of its results.
"""

from collections.abc import Iterable, Sequence
from itertools import chain, repeat
from operator import itemgetter, methodcaller
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from taskiq import AsyncResultBackend, TaskiqResult
from taskiq_redis import (
    RedisAsyncClusterResultBackend,
    RedisAsyncResultBackend,
    RedisAsyncSentinelResultBackend,
)

from taskiq_batching._compat import redis_result_keys, redis_result_prefix
from taskiq_batching._compat.redis_py import string_encoding
from taskiq_batching.transports.redis_common import reached_through
from taskiq_batching.transports.redis_wire import bulk, round_trip

_WRITERS = (
    RedisAsyncResultBackend.set_result,
    RedisAsyncSentinelResultBackend.set_result,
    RedisAsyncClusterResultBackend.set_result,
)

#: What ``str.encode()`` does without arguments (UTF-8, strict).
_PLAIN_UTF8 = {("utf-8", "strict"), ("utf8", "strict")}
_first = itemgetter(0)
_second = itemgetter(1)


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
        # Rows as columns, taken apart by ``map`` (no step per row in
        # Python): this runs for every message of a batch.
        task_ids = list(map(_first, results))
        owners = list(map(id, map(_second, results)))  # each row's result, by id
        values: dict[int, bytes] = {}
        refused: dict[int, BaseException] = {}
        # Each distinct result object encoded once, in the order they come.
        for owner, result in dict(
            zip(owners, map(_second, results), strict=True)
        ).items():
            try:
                values[owner] = self.backend.serializer.dumpb(
                    result.model_dump(mode="json")
                )
            except Exception as exc:
                refused[owner] = exc
        failures: list[tuple[int, BaseException]] = []
        kept: list[int] | None = None  # the rows written (None: all of them)
        if refused:
            failures = [(i, refused[o]) for i, o in enumerate(owners) if o in refused]
            kept = [i for i, owner in enumerate(owners) if owner not in refused]
            task_ids = [task_ids[i] for i in kept]
            owners = [owners[i] for i in kept]
        if task_ids:
            try:
                failed = await self._set_all(task_ids, owners, values)
            except Exception as exc:
                failed = [(i, exc) for i in range(len(task_ids))]
            failures += [(i if kept is None else kept[i], e) for i, e in failed]
        return sorted(failures, key=_first)

    async def _set_all(
        self, task_ids: list[str], owners: list[int], values: dict[int, bytes]
    ) -> list[tuple[int, BaseException]]:
        """Write each task_id's value; the failures of single keys (others raise)."""
        ex = self.backend.result_ex_time
        px = None if ex else self.backend.result_px_time
        if self.wired:
            return await self._set_by_wire(task_ids, owners, values, ex, px)
        keys = redis_result_keys(self.backend, task_ids)
        async with self._client().pipeline(transaction=False) as pipe:
            for key, owner in zip(keys, owners, strict=True):
                pipe.set(key, values[owner], ex=ex or None, px=px or None)
            await pipe.execute()
        return []

    async def _set_by_wire(
        self,
        task_ids: list[str],
        owners: list[int],
        values: dict[int, bytes],
        ex: int | None,
        px: int | None,
    ) -> list[tuple[int, BaseException]]:
        """One round trip: an MSET, or a SET with the expiry per key."""
        redis = self._client()
        expires = bool(ex or px)
        expiry = b""  # SET key value EX|PX amount: after each value
        if expires:
            option, amount = (b"EX", ex) if ex else (b"PX", px)
            expiry = bulk(option) + bulk(str(amount).encode())
        # What follows each key: its value (each distinct one packed once).
        tails = {
            owner: b"\r\n" + bulk(value) + expiry for owner, value in values.items()
        }
        head = b"*5\r\n$3\r\nSET\r\n" if expires else b""
        lead, names = self._names(redis, task_ids)
        # Each command (or MSET's pair): what comes before the key, the key,
        # the rest, joined at once; keys of one length (task_ids of taskiq's
        # kicker: uuid4 hex) share what comes before them.
        lengths = set(map(len, names))
        heads: Iterable[bytes]
        if len(lengths) == 1:
            heads = repeat(head + b"$%d\r\n" % (len(lead) + lengths.pop()) + lead)
        else:
            heads = [
                head + b"$%d\r\n" % (len(lead) + len(name)) + lead for name in names
            ]
        data = b"".join(
            chain.from_iterable(
                zip(heads, names, map(tails.__getitem__, owners), strict=False)
            )
        )
        if not expires:
            head = b"*%d\r\n$4\r\nMSET\r\n" % (1 + 2 * len(names))
            (reply,) = await round_trip(redis, [head, data], 1)
            if isinstance(reply, ResponseError):
                raise reply
            return []
        replies = await round_trip(redis, [data], len(names))
        if replies.count(b"OK") == len(replies):  # every SET's reply, usually
            return []
        return [
            (index, reply)
            for index, reply in enumerate(replies)
            if isinstance(reply, ResponseError)
        ]

    def _names(self, redis: Any, task_ids: list[str]) -> tuple[bytes, list[bytes]]:
        """The keys, encoded as redis-py encodes them: a prefix shared, and the rest.

        :return: the prefix all keys share (the backend's ``prefix_str:``,
            when it names keys as taskiq-redis does), and each key's rest.
        """
        charset, errors = string_encoding(redis)
        encode: Any = methodcaller("encode", charset, errors)
        if (charset.lower(), errors) in _PLAIN_UTF8:
            encode = str.encode  # the same bytes, without naming the codec each time
        prefix = redis_result_prefix(self.backend)
        if prefix is not None:
            try:
                return encode(prefix), list(map(encode, task_ids))
            except TypeError:  # a task_id that is not a str: named as the backend would
                pass
        return b"", list(map(encode, redis_result_keys(self.backend, task_ids)))
