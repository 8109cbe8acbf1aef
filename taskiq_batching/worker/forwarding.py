"""Forwarding: batched messages read on the main queue, moved to where batches wait.

A plain taskiq producer (without the plugin) puts a served task's
messages on the broker's main queue. The pump reads them and the router
sets them aside (``Router.forwarding``); after each read, the taker hands
them to the transport's ``Forwarder``, which moves them to where the
task's batches wait in the broker, keeping their send time. If moving
fails, this process batches them itself (``Router.parked``), as without
the broker's help: nothing is lost or delayed.
"""

import logging
from collections.abc import Iterable

from taskiq_batching.core.batcher import Batcher
from taskiq_batching.error_texts import describe
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.batch_source import (
    BatchSource,
    Forwarder,
    ForwardingPaused,
)
from taskiq_batching.worker.own_share import OwnShare
from taskiq_batching.worker.routing import Router

logger = logging.getLogger("taskiq_batching")


def route_forwards(
    router: Router,
    forwarder: Forwarder,
    served: Iterable[BatchSpec],
    every: Iterable[BatchSpec],
) -> None:
    """Tell the router which tasks' messages read on the main queue to set aside.

    :param router: the pump's router.
    :param forwarder: the transport's forwarder.
    :param served: the tasks the batch source serves.
    :param every: every batched task: a forwarder with ``serves`` picks
        its own among them (AMQP: a queue per task, whose deliveries the
        pump reads, told apart by ``waited``).
    """
    every = list(every)
    serves = getattr(forwarder, "serves", None)
    if serves is None:
        router.forwarded = {spec.task_name for spec in served}
    else:
        router.forwarded = {spec.task_name for spec in every if serves(spec)}
    router.waited = getattr(forwarder, "waited", None)
    if getattr(forwarder, "forward_only_to_fill", False):
        # A keyed task is always forwarded: its keys split each worker's
        # share, and gathering them across the fleet is what fills them.
        router.shares = {
            spec.task_name: OwnShare(spec)
            for spec in every
            if spec.task_name in router.forwarded and spec.settings.key is None
        }


async def forward_read(
    router: Router,
    batcher: Batcher,
    forwarder: Forwarder | None,
    source: BatchSource | None,
) -> None:
    """Hand what the pump set aside to the forwarder; park what it cannot move.

    :param router: the pump's router (what was set aside, and parking).
    :param batcher: the batcher (its tasks).
    :param forwarder: the transport's forwarder.
    :param source: the transport's batch source (its ``mark`` of
        ``batch_deadline``, when it has one).
    """
    forwarding, router.forwarding = router.forwarding, {}
    marks, router.marks = router.marks, {}
    assert forwarder is not None or not forwarding
    mark = getattr(source, "mark", None)
    for task_name, keyed in forwarding.items():
        spec = batcher.specs[task_name]
        deliveries = [delivery for delivery, _ in keyed]
        try:
            assert forwarder is not None
            await forwarder.forward([(d, spec, key) for d, key in keyed])
        except Exception as exc:
            if not isinstance(exc, ForwardingPaused):  # a pause's cause was logged
                logger.error(
                    "taskiq_batching: cannot forward %d message(s) of %s to where "
                    "its batches wait; this worker batches them: %s",
                    len(deliveries),
                    task_name,
                    describe(exc),
                )
            for delivery in deliveries:
                router.parked.park(task_name, delivery)
            continue
        if mark is not None and marks.get(task_name):
            await mark(spec, marks[task_name])
