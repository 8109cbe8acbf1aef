"""The behaviour suite's NATS streams: each path's own deleted, stale ones swept.

A path deletes every stream named after its queue when it closes (the
main stream and ``<queue>-batch``, which ``wait_in_broker`` makes). A run
killed before its fixtures close (an outer timeout, a kill) leaves its
streams on the shared server: the first NATS path of a run deletes the
suite's streams older than ``STALE_SECONDS``, longer than any test lasts,
so a run in progress elsewhere keeps its own.
"""

import contextlib
import datetime
import re

import nats
from nats.js.errors import NotFoundError

#: The suite's streams: ``tb-parity-<10 hex digits>`` and its batch stream.
SUITE_STREAM = re.compile(r"^tb-parity-[0-9a-f]{10}(-batch)?$")
#: Age after which a suite stream is left from a killed run (seconds).
STALE_SECONDS = 1800.0

_swept: set[str] = set()


async def delete_streams(url: str, queue: str) -> None:
    """Delete the streams of one path (named ``queue`` or ``queue-...``).

    :param url: the NATS server.
    :param queue: the path's queue.
    """
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        for info in await js.streams_info():
            name = info.config.name or ""
            if name == queue or name.startswith(f"{queue}-"):
                with contextlib.suppress(NotFoundError):  # gone meanwhile
                    await js.delete_stream(name)
    finally:
        await client.close()


async def sweep_stale(url: str) -> None:
    """Once per run and server: delete the suite's streams left by killed runs.

    :param url: the NATS server.
    """
    if url in _swept:
        return
    _swept.add(url)
    now = datetime.datetime.now(datetime.timezone.utc)
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        for info in await js.streams_info():
            name = info.config.name or ""
            created = info.created
            if (
                SUITE_STREAM.match(name)
                and created is not None
                and (now - created).total_seconds() > STALE_SECONDS
            ):
                with contextlib.suppress(NotFoundError):  # another run's sweep
                    await js.delete_stream(name)
    finally:
        await client.close()
