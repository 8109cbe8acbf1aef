"""The pump's stop: what the worker holds finished in time, the rest given back.

In order: the taker stops (a take in flight finishes); the consumers are
cancelled, so that what comes next goes to other workers; deliveries
read but not handed over go back to the broker; parked messages are
batched as room frees, and buffers flush at once; batches get
``--wait-tasks-timeout`` to finish, after which they are cut off and
their messages left to the broker (a log line gives their count); what
is left of that budget is the Receiver's; the transport closes.
"""

import asyncio
import contextlib
import logging

from taskiq_batching._compat import share_stop_budget
from taskiq_batching.core.batcher import Batcher
from taskiq_batching.transports.base import Transport
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.worker.acks import give_back, unacked
from taskiq_batching.worker.lifecycle import Lifecycle
from taskiq_batching.worker.options import WorkerOptions
from taskiq_batching.worker.routing import Router
from taskiq_batching.worker.taking import Taker

logger = logging.getLogger("taskiq_batching")


async def stop_pump(
    taker: Taker,
    router: Router,
    batcher: Batcher,
    lifecycle: Lifecycle,
    transport: Transport,
    options: WorkerOptions,
    reading: "asyncio.Future[list[Delivery]] | None",
) -> None:
    """Give back what was not handed over, finish or cut off batches, close.

    :param taker: the pump's taker.
    :param router: the pump's router (its hand-off, parking and giving back).
    :param batcher: the batcher.
    :param lifecycle: accepts the parked messages.
    :param transport: the broker's transport.
    :param options: the Receiver's settings (its ``--wait-tasks-timeout``).
    :param reading: a read still pending (after a listener error), or None.
    :raises Exception: what the broker's listener raised while closing.
    """
    loop = asyncio.get_running_loop()
    budget = options.wait_tasks_timeout
    deadline = None if budget is None else loop.time() + budget
    await taker.stop(deadline)
    # Before finishing what it holds: what comes next goes to others.
    await transport.stop_consuming()
    unread = list(router.handoff) + router.giving.take_pending()
    router.handoff.clear()
    if reading is not None:
        with contextlib.suppress(Exception):
            unread += await transport.interrupt(reading)
    await give_back(transport, unread, "read but not started")
    await _finish_parked(router, batcher, lifecycle, transport, deadline)
    if batcher.buffered():
        logger.info(
            "taskiq_batching: flushing %d buffered message(s)", batcher.buffered()
        )
    cut = await batcher.drain(deadline)
    if cut:
        logger.warning(
            "taskiq_batching: %d message(s) of batches still running after "
            "--wait-tasks-timeout=%s s were cut off and left to the broker",
            len(cut),
            budget,
        )
        await give_back(transport, unacked(cut), "cut off")
    if deadline is not None and options.receiver is not None:
        share_stop_budget(options.receiver, max(deadline - loop.time(), 0.0))
    await transport.close()


async def _finish_parked(
    router: Router,
    batcher: Batcher,
    lifecycle: Lifecycle,
    transport: Transport,
    deadline: float | None,
) -> None:
    """Batch the parked messages as room frees (buffers now flush at once).

    They were taken from the broker: finished like the buffered ones,
    within the same deadline; what is still parked then goes back.
    """
    loop = asyncio.get_running_loop()
    parked = router.parked
    batcher.begin_shutdown()
    while parked:
        await lifecycle.accept(router.unpark())
        remaining = None if deadline is None else deadline - loop.time()
        if not parked or (remaining is not None and remaining <= 0):
            break
        await asyncio.wait(
            {asyncio.ensure_future(batcher.changed())}, timeout=remaining
        )
    await give_back(transport, parked.clear(), "parked past the deadline")
