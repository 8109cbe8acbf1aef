"""The transport limit: a plain redis-py consumer of a taskiq stream.

``python -m bench.transport`` (settings in ``TBB_*`` variables, like the
taskiq worker): reads 100 entries at a time (XREADGROUP COUNT 100), decodes
each with taskiq's formatter (the same ``broker.formatter`` a worker uses),
writes the batch's items with one MSET and acks the 100 ids with one XACK.
No taskiq worker, no per-message objects, no results: what the transport
allows one process to do, the ceiling for any worker on this queue.
Stops after ``TBB_COUNT`` messages, or after 120 s.
"""

import os
import time
from typing import Any

from redis import Redis

from bench.taskiq_app import AppSettings, build

GROUP = "taskiq"


def main() -> None:
    settings = AppSettings.from_env()
    total = int(os.environ["TBB_COUNT"])
    formatter = build(settings).broker.formatter
    redis = Redis.from_url(settings.redis_url)
    queue = settings.queue
    done = 0
    deadline = time.monotonic() + 120
    while done < total and time.monotonic() < deadline:
        fetched: Any = redis.xreadgroup(
            GROUP, "transport", {queue: ">"}, count=100, block=1000
        )
        if not fetched:
            continue
        for _stream, entries in fetched:
            ids = []
            values = {}
            for entry_id, fields in entries:
                message = formatter.loads(fields[b"data"])
                item = message.args[0]
                values[f"{queue}:v:{item}"] = item
                ids.append(entry_id)
            redis.mset(values)
            redis.xack(queue, GROUP, *ids)
            done += len(ids)
    redis.close()


if __name__ == "__main__":
    main()
