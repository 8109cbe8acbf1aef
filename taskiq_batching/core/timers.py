"""A buffer's ``batch_timeout`` timer: started and moved from send times.

``flush.FlushRules`` decides when buffers flush; this is the part of it
about time: a buffer's timer counts from the earliest send time its
messages' deliveries know (``Held.sent_at``), else from when its first
message was taken; ``batch_min_size`` holds a due timer back until
``batch_max_wait``.
"""

import math
from collections.abc import Callable

from taskiq_batching.core.buffer import Buffer
from taskiq_batching.core.ports import Buffers, Key
from taskiq_batching.settings import FlushReason
from taskiq_batching.spec import BatchSpec

#: A send time earlier than the buffer's start by less than this many
#: seconds leaves its timer as it is. Send times are converted to the
#: event loop's clock against a wall clock that moves while a chunk is
#: added, so messages sent in the same millisecond (a stream entry id's
#: resolution) would otherwise each move the timer a few microseconds
#: earlier: a cancelled timer and a new one per message.
CLOCK_SLACK = 0.001


def start(
    batcher: Buffers,
    spec: BatchSpec,
    buffer: Buffer,
    now: float,
    closing: bool,
    expire: Callable[[Key], None],
) -> None:
    """Start or advance a buffer's timer from its newest message's send time.

    A message sent before the buffer's others (a redelivery, a slower
    sender) by more than ``CLOCK_SLACK`` moves the timer earlier; never
    later. The send time (as its delivery gives it) that set the buffer's
    start is kept (``Buffer.sent_floor``): a later one is no earlier, and
    ``FlushRules.added`` does not call this for it (a step of the wall
    clock while a buffer is open is then not seen: it was converted once).

    :param batcher: the buffers.
    :param spec: its task's spec.
    :param buffer: the buffer, its newest message just added.
    :param now: the event loop's time.
    :param closing: the worker stops (no timer: buffers flush at once).
    :param expire: called with the buffer's key when ``batch_timeout`` passed.
    """
    newest = buffer.items[-1]
    sent = newest.sent_at(now)
    started = buffer.timer is not None
    if started and sent > buffer.opened_at - CLOCK_SLACK:
        return
    if sent <= buffer.opened_at:
        buffer.opened_at = sent
        given = getattr(newest.delivery, "sent_at", None)
        # Only a send time that was used (``sent_at`` ignores one that is
        # not a finite float): a later one no earlier converts no earlier.
        if type(given) is float and math.isfinite(given):
            buffer.sent_floor = given
        else:
            buffer.sent_floor = math.inf
    settings = spec.settings
    timeout = settings.batch_timeout
    if timeout is None or closing:
        return
    if buffer.timer is not None:
        buffer.timer.cancel()
    loop = batcher.bind_loop()
    key = (buffer.task_name, buffer.key)
    if buffer.overdue and settings.max_wait is not None:
        buffer.timer = loop.call_at(
            buffer.opened_at + settings.max_wait,
            batcher.flush,
            key,
            FlushReason.TIMEOUT,
        )
    else:
        buffer.timer = loop.call_at(buffer.opened_at + timeout, expire, key)


def expire(batcher: Buffers, key: Key, closing: bool) -> None:
    """``batch_timeout`` passed: flush, unless ``batch_min_size`` holds it.

    :param batcher: the buffers.
    :param key: the buffer's key.
    :param closing: the worker stops (nothing is held back).
    """
    buffer = batcher.buffers.get(key)
    if buffer is None:
        return
    settings = batcher.specs[key[0]].settings
    if (
        settings.min_size is not None
        and settings.max_wait is not None
        and len(buffer.items) < settings.min_size
        and not closing
    ):
        loop = batcher.bind_loop()
        until = buffer.opened_at + settings.max_wait - loop.time()
        if until > 0:
            buffer.overdue = True  # flushed as soon as it reaches min_size
            buffer.timer = loop.call_later(
                until, batcher.flush, key, FlushReason.TIMEOUT
            )
            return
    batcher.flush(key, FlushReason.TIMEOUT)
