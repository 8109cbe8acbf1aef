"""taskiq-redis's result backends, written many results per round trip.

Each result is encoded exactly as the backend's ``set_result`` encodes it
(its serializer, over ``model_dump(mode="json")``), once per distinct
result object, and every ``SET`` (with the backend's expiry) goes in one
pipeline. A result that cannot be encoded is reported alone; a pipeline
that fails reports each of its results.
"""

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from taskiq import AsyncResultBackend, TaskiqResult
from taskiq_redis import (
    RedisAsyncClusterResultBackend,
    RedisAsyncResultBackend,
    RedisAsyncSentinelResultBackend,
)

from taskiq_batching._compat import redis_result_key

_WRITERS = (
    RedisAsyncResultBackend.set_result,
    RedisAsyncSentinelResultBackend.set_result,
    RedisAsyncClusterResultBackend.set_result,
)


def results_for(backend: AsyncResultBackend[Any]) -> "RedisResults | None":
    """The writer for taskiq-redis result backends that store as shipped.

    :param backend: any result backend.
    :return: the writer, or None for other backends.
    """
    if type(backend).set_result in _WRITERS:
        return RedisResults(backend)
    return None


class RedisResults:
    """Writes results the way a taskiq-redis result backend does, pipelined.

    :param backend: the result backend.
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._redis: Any = None

    def _client(self) -> Any:
        if self._redis is None:
            backend = self.backend
            if hasattr(backend, "redis_pool"):
                self._redis = Redis(connection_pool=backend.redis_pool)
            elif hasattr(backend, "sentinel"):
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
        rows: list[tuple[int, str, bytes]] = []
        for index, (task_id, result) in enumerate(results):
            value = encoded.get(id(result))
            if value is None:
                try:
                    value = backend.serializer.dumpb(result.model_dump(mode="json"))
                except Exception as exc:
                    failures.append((index, exc))
                    continue
                encoded[id(result)] = value
            rows.append((index, redis_result_key(backend, task_id), value))
        if rows:
            try:
                await self._set_all(rows)
            except Exception as exc:
                failures.extend((index, exc) for index, _, _ in rows)
        return sorted(failures, key=lambda failure: failure[0])

    async def _set_all(self, rows: list[tuple[int, str, bytes]]) -> None:
        ex = self.backend.result_ex_time
        px = None if ex else self.backend.result_px_time
        async with self._client().pipeline(transaction=False) as pipe:
            for _, key, value in rows:
                pipe.set(key, value, ex=ex or None, px=px or None)
            await pipe.execute()
