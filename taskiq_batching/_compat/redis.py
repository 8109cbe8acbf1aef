"""taskiq-redis's and redis-py's internals.

Tested with taskiq-redis 1.2.4, the lowest and newest release
``pyproject.toml`` allows (``>=1.2.4,<1.3``).
"""

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
