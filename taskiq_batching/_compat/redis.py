"""taskiq-redis's and redis-py's internals.

Tested with taskiq-redis 1.2.4, the lowest and newest release
``pyproject.toml`` allows (``>=1.2.4,<1.3``).
"""

import functools
from collections.abc import Iterable
from typing import Any


def redis_result_key(backend: Any, task_id: str) -> str:
    """The key under which taskiq-redis's result backends store a result.

    Relies on: ``RedisAsyncResultBackend._task_name(task_id)`` (and the
    sentinel and cluster backends' own), the private method their
    ``set_result`` and ``get_result`` name keys with (``prefix_str``
    included).

    :param backend: a taskiq-redis result backend.
    :param task_id: a task_id.
    :return: its key.
    """
    return str(backend._task_name(task_id))


def redis_result_keys(backend: Any, task_ids: Iterable[str]) -> list[str]:
    """``redis_result_key`` of many task_ids, without a call of its own for each.

    :param backend: a taskiq-redis result backend.
    :param task_ids: task_ids.
    :return: their keys, in order.
    """
    name = backend._task_name
    return [str(name(task_id)) for task_id in task_ids]


def redis_result_prefix(backend: Any) -> str | None:
    """What every result key starts with, when a key is that and the task_id.

    Relies on: taskiq-redis's own ``_task_name`` (of each of its three
    result backends) naming a key ``f"{prefix_str}:{task_id}"``, or the
    task_id alone without ``prefix_str``; a backend whose ``_task_name``
    is another (a subclass's) gets None, its keys named by
    ``redis_result_keys``.

    :param backend: a taskiq-redis result backend.
    :return: the prefix (``""`` without ``prefix_str``), or None.
    """
    namer = getattr(getattr(backend, "_task_name", None), "__func__", None)
    if namer is None or namer not in _stock_namers():
        return None
    return str(backend._task_name(""))


@functools.cache
def _stock_namers() -> tuple[Any, ...]:
    # Imported when first used: taskiq-redis is an extra (``[redis]``).
    from taskiq_redis import (
        RedisAsyncClusterResultBackend,
        RedisAsyncResultBackend,
        RedisAsyncSentinelResultBackend,
    )

    return tuple(
        getattr(backend, "_task_name", None)
        for backend in (
            RedisAsyncResultBackend,
            RedisAsyncClusterResultBackend,
            RedisAsyncSentinelResultBackend,
        )
    )
