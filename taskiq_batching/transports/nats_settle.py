"""Settling NATS messages: one publish per verdict, then one flush for the lot.

(And the start-up warning about ``ack_wait``, which settling must beat.)

A verdict (``+ACK``, ``-NAK``, ``+WPI``) is a publish to the message's
reply subject; the publishes are buffered by the client and sent with
one ``flush`` (a round trip). nats-py's ``flush`` returns at once while
the connection is lost, with no round trip: acks and naks sent then may
never reach the server, which delivers those messages again. That is
logged (the worker acks again, without running them, a message it acked
that comes back).
"""

import logging
from collections.abc import Sequence
from typing import Any

from taskiq_batching._compat import nats_publish_each
from taskiq_batching.spec import BatchSpec

logger = logging.getLogger("taskiq_batching")

ACK, NAK, IN_PROGRESS = b"+ACK", b"-NAK", b"+WPI"


async def publish_verdicts(client: Any, replies: Sequence[str], verdict: bytes) -> None:
    """Publish one verdict to each reply subject, then flush once.

    :param client: the broker's nats-py client.
    :param replies: the messages' reply subjects.
    :param verdict: ``ACK``, ``NAK`` or ``IN_PROGRESS``.
    :raises Exception: the first publish that failed (the others are sent).
    """
    first: BaseException | None = None
    reconnects = client.stats["reconnects"]
    connected = client.is_connected
    if not await nats_publish_each(client, replies, verdict):
        for reply in replies:
            try:
                await client.publish(reply, verdict)
            except Exception as exc:
                first = first or exc
    await client.flush()
    # nats-py's flush returns at once while it reconnects: no round trip.
    if not (connected and client.is_connected) or (
        client.stats["reconnects"] != reconnects
    ):
        _unconfirmed(len(replies), verdict)
    if first is not None:
        raise first


def _unconfirmed(count: int, verdict: bytes) -> None:
    """Say that a settle may not have reached the server (connection lost)."""
    if verdict is IN_PROGRESS:
        return  # the next keep-alive sends it again
    logger.warning(
        "taskiq_batching: %d NATS %s(s) sent while the connection was "
        "lost may not have reached the server: it delivers those "
        "messages again (after ack_wait%s)",
        count,
        "ack" if verdict is ACK else "nak",
        "; this worker acks them again without running them" if verdict is ACK else "",
    )


def warn_ack_wait(specs: Sequence[BatchSpec], ack_wait: float) -> None:
    """Warn about each task that may hold a message longer than ``ack_wait``.

    :param specs: the worker's batched tasks.
    :param ack_wait: the consumer's ``ack_wait`` in seconds.
    """
    for spec in specs:
        timeout = spec.settings.batch_timeout
        if timeout is None:
            held = "until its buffer fills (size-only batching)"
        elif timeout + (spec.timeout or 0) < ack_wait:
            continue
        else:
            held = f"for {timeout + (spec.timeout or 0):g} s or more"
        logger.warning(
            "taskiq_batching: task %s may hold a message %s, but the NATS "
            "consumer's ack_wait=%g s redelivers it meanwhile unless the "
            "worker's in_progress keep-alive (every ack_wait/3) gets "
            "through; a stalled worker then gets duplicate runs elsewhere. "
            "Keep ack_wait above batch_timeout plus the longest batch.",
            spec.task_name,
            held,
            ack_wait,
        )
