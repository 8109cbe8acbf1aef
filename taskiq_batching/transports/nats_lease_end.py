"""What a NATS lease reader needs at its edges: its stop, and acks lost.

At stop, a reader's pull request may still wait at the server. Two ways
its messages would then wait ``ack_wait`` (30 s by default) instead of
being handed back at once:

- a message already on its way when the reader unsubscribes is dropped by
  the client, never settled: ``drain`` unsubscribes with a round trip, so
  the reader receives (and hands back) what the server sent before it knew;
- the server drops a waiting request nobody listens to only when it looks
  at its waiting requests (a new request, or the consumer's info); until
  then it delivers to it, into the void, also the messages the stop naks
  (measured on nats-server 2.9.10: 1 of 30 nak'ed messages went there):
  ``end_request`` asks for the consumer's info, which makes it look.

Acks sent around a server restart may be lost, and the server delivers
those messages again: ``AckedMemory`` remembers what the reader acked
last, so it acks such a message again instead of running it twice (as
``nats_pull.Pull`` does for the main consumer).
"""

import contextlib
import logging
from typing import Any

from taskiq_batching.error_texts import describe
from taskiq_batching.transports.nats_pull import ACKED_MEMORY

logger = logging.getLogger("taskiq_batching")


async def drain(sub: Any) -> None:
    """Unsubscribe, receiving what the server sent before it knew (a round trip).

    :param sub: a nats-py subscription.
    """
    try:
        await sub.drain()
    except Exception:  # a closed or reconnecting connection
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def end_request(client: Any, api: str, timeout_seconds: float) -> None:
    """Make the server drop a request of ours it still holds (nobody listens).

    :param client: the reader's NATS client (its subscriptions drained).
    :param api: the durable's ``MSG.NEXT`` subject.
    :param timeout_seconds: the longest wait for the server's answer.
    """
    info = api.replace(".CONSUMER.MSG.NEXT.", ".CONSUMER.INFO.", 1)
    try:
        await client.request(info, b"", timeout=timeout_seconds)
    except Exception as exc:
        logger.warning(
            "taskiq_batching: cannot end the NATS lease request at stop "
            "(messages handed back may wait ack_wait): %s",
            describe(exc),
        )


class AckedMemory:
    """The stream sequences a reader acked last (an ordered set, bounded)."""

    def __init__(self, size: int = ACKED_MEMORY) -> None:
        self.size = size
        self._sequences: dict[int, None] = {}

    def add(self, sequence: int) -> None:
        """Remember an ack (the oldest is forgotten past ``size``)."""
        self._sequences[sequence] = None
        if len(self._sequences) > self.size:
            del self._sequences[next(iter(self._sequences))]

    def __contains__(self, sequence: object) -> bool:
        return sequence in self._sequences
