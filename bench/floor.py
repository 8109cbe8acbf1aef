"""The floor of Redis's work per message: a consumer that sends only what must be sent.

``python -m bench.floor`` (settings in ``TBB_*`` variables, like the taskiq
worker): reads 100 entries at a time (``XREADGROUP COUNT 100``), stores a
result for each under the result backend's key for its task_id with one
pipeline of ``SET key value EX 900`` (the value: what taskiq-redis stores
for a task that returned None), and acks the 100 ids with one ``XACK``.
No script, no taskiq worker: the Redis commands a worker cannot do
without, so the server's command time per message here is the floor a
worker's is compared with (``bench.scaling``). Stops after ``TBB_COUNT``
messages, or after 120 s.
"""

import json
import os
import time
from typing import Any

from redis import Redis
from taskiq import TaskiqResult
from taskiq.serializers import JSONSerializer

from bench.taskiq_app import AppSettings

GROUP = "taskiq"
#: The benchmark app's result_ex_time (bench/taskiq_app.py).
RESULT_EX_TIME = 900


def result_value() -> bytes:
    """What taskiq-redis stores for a task that returned None (JSON)."""
    result: TaskiqResult[Any] = TaskiqResult(
        is_err=False, return_value=None, execution_time=0.0001, labels={}
    )
    return JSONSerializer().dumpb(result.model_dump(mode="json"))


def main() -> None:
    settings = AppSettings.from_env()
    total = int(os.environ["TBB_COUNT"])
    redis = Redis.from_url(settings.redis_url)
    queue = settings.queue
    value = result_value()
    done = 0
    deadline = time.monotonic() + 120
    while done < total and time.monotonic() < deadline:
        fetched: Any = redis.xreadgroup(
            GROUP, "floor", {queue: ">"}, count=100, block=1000
        )
        if not fetched:
            continue
        for _stream, entries in fetched:
            ids = []
            pipe = redis.pipeline(transaction=False)
            for entry_id, fields in entries:
                task_id = json.loads(fields[b"data"])["task_id"]
                pipe.set(f"{queue}:{task_id}", value, ex=RESULT_EX_TIME)
                ids.append(entry_id)
            pipe.execute()
            redis.xack(queue, GROUP, *ids)
            done += len(ids)
    redis.close()


if __name__ == "__main__":
    main()
