"""What a NATS test reads of the durables a worker consumes."""

import contextlib

import nats
from nats.js.errors import NotFoundError


async def states(nats_url: str, stream: str) -> list[tuple[int, int]]:
    """(ack-pending, pending) of the main durable, then of the batch stream's
    lease durables (the ``wait`` path; absent on ``today``'s)."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        infos = [await js.consumer_info(stream, stream)]
        with contextlib.suppress(NotFoundError):
            infos += await js.consumers_info(f"{stream}-batch")
        return [(info.num_ack_pending or 0, info.num_pending or 0) for info in infos]
    finally:
        await client.close()
