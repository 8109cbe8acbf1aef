"""The celery-batches peer: the same MSET sink under Celery.

``make_app(redis_url, queue)`` builds a Celery app whose every Redis key
starts with ``<queue>:`` (kombu's ``global_keyprefix``, so the run can
delete them all) and one ``celery_batches.Batches`` task, ``bench.sink``,
with ``flush_every=100``: the worker (solo pool, prefetch 200) runs it with
up to 100 requests and writes their items with one MSET. Late acks: a
message is acked after its batch returned (the closest to taskiq's
``when_saved``). No result backend (celery-batches stores none by itself).

The worker process imports ``bench.celery_worker:app`` (``TBB_*`` vars).
"""

from typing import Any

from celery import Celery
from celery_batches import Batches
from redis import Redis

FLUSH_EVERY = 100
PREFETCH = 200


def make_app(redis_url: str, queue: str) -> tuple[Celery, Any]:
    """The Celery app and its batched sink task."""
    app = Celery(f"tbbench-{queue}", broker=redis_url, set_as_current=False)
    app.conf.update(
        broker_transport_options={"global_keyprefix": f"{queue}:"},
        broker_connection_retry_on_startup=True,
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        task_acks_late=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=PREFETCH,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
    )
    sink_client: list[Redis] = []

    def redis() -> Redis:
        if not sink_client:
            sink_client.append(Redis.from_url(redis_url))
        return sink_client[0]

    @app.task(
        base=Batches,
        name="bench.sink",
        flush_every=FLUSH_EVERY,
        flush_interval=1,
        acks_late=True,
        shared=False,
    )
    def sink(requests: list[Any]) -> None:
        redis().mset({f"{queue}:v:{r.args[0]}": r.args[0] for r in requests})

    return app, sink


def queue_key(queue: str) -> str:
    """Redis list of the queue's messages."""
    return f"{queue}:{queue}"


def unacked_key(queue: str) -> str:
    """Redis hash of the messages the worker took and has not acked."""
    return f"{queue}:unacked"


def worker_argv(python: str) -> list[str]:
    """The ``celery worker`` command of the peer workload."""
    return [
        python,
        "-m",
        "celery",
        "-A",
        "bench.celery_worker:app",
        "worker",
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "--prefetch-multiplier",
        str(PREFETCH),
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
