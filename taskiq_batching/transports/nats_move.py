"""Moving a plain producer's batched messages on NATS, without waiting for them.

A worker moves what a plain taskiq kicker put on the main subject to the
batched task's own subject (``nats_forward.Moves.forward``): one
JetStream publish per message, each stored before its original is acked.
Measured (docs/fleet.md, "A plain producer's messages, moved"): awaiting
nats-py's ``JetStreamContext.publish`` per message and then the acks'
flush put two round trips to the server into every read of the worker's
pump; on a loaded machine at 2,000 msg/s a chunk of ~75 messages took
~65 ms to move, the workers read less than was sent and fell behind.

``Mover`` publishes a chunk with replies to one inbox of its own
(``<inbox>.<serial>``) and returns: the pump reads on. One
subscription's callback counts the stream's answers; once every message
of a chunk is answered (or ``MOVE_TIMEOUT`` passed) the chunk is handed
to ``on_moved``, which acks the originals of the stored ones. So a
message is stored before its original is acked (at-least-once), and one
moved twice (its original delivered again) is stored once: its
``Nats-Msg-Id`` is the original's stream sequence (``nats_forward.py``).
"""

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from taskiq_batching.error_texts import describe
from taskiq_batching.transports.delivery import Delivery

#: Seconds a chunk waits for the stream's answers (nats-py's JetStream default).
MOVE_TIMEOUT = 5.0
#: Status of an answer when no stream listens on the subject.
NO_RESPONDERS = "503"

#: A message to move: its delivery, and the subject, data and headers to publish.
Move = tuple[Delivery, str, bytes, Mapping[str, str]]


class Moved:
    """A chunk of moves, answered: what was stored, refused or not answered.

    :param size: the chunk's messages.
    """

    __slots__ = ("left", "refused", "stored", "timer", "unknown", "why")

    def __init__(self, size: int) -> None:
        #: Messages not answered yet.
        self.left = size
        #: Stored: their originals may be acked.
        self.stored: list[Delivery] = []
        #: Not stored (the stream said why): the worker may batch them.
        self.refused: list[Delivery] = []
        #: Not answered in time, or not sent: stored or not, nobody knows.
        self.unknown: list[Delivery] = []
        #: Why some were refused or unknown (the first reason).
        self.why = ""
        self.timer: asyncio.TimerHandle | None = None

    def fail(self, why: str) -> None:
        """Note the first reason a message was not stored."""
        self.why = self.why or why


OnMoved = Callable[[Moved], Awaitable[None]]


class Mover:
    """Publishes chunks to JetStream; ``on_moved`` gets each chunk once answered.

    :param client: the broker's connected NATS client.
    :param on_moved: settles a chunk's originals.
    :param timeout_seconds: the longest wait for a chunk's answers.
    """

    def __init__(
        self, client: Any, on_moved: OnMoved, timeout_seconds: float = MOVE_TIMEOUT
    ) -> None:
        self.client = client
        self.on_moved = on_moved
        self.timeout_seconds = timeout_seconds
        #: Each publish not answered yet: its chunk and delivery, by serial.
        self.waiting: dict[int, tuple[Moved, Delivery]] = {}
        self.serial = 0
        #: Chunks published and not all answered.
        self.chunks: set[Moved] = set()
        #: Set while no chunk is in flight.
        self.drained = asyncio.Event()
        self.drained.set()
        #: ``on_moved`` calls in progress (waited for at ``stop``).
        self.settling: set[asyncio.Future[None]] = set()
        self._prefix = ""
        self._sub: Any = None

    async def publish(self, moves: Sequence[Move]) -> None:
        """Publish each move; return once handed to the client (not stored yet).

        A publish the client refuses (closed, its buffer full) leaves that
        move and the rest of the chunk unknown (nothing is raised).

        :param moves: the messages.
        """
        if not moves:
            return
        chunk = Moved(len(moves))
        self.chunks.add(chunk)
        self.drained.clear()
        loop = asyncio.get_running_loop()
        chunk.timer = loop.call_later(self.timeout_seconds, self._expire, chunk)
        publish, sent = self.client.publish, 0
        try:
            await self._start()
            for delivery, subject, data, headers in moves:
                self.serial += 1
                serial = self.serial
                self.waiting[serial] = (chunk, delivery)
                try:
                    reply = f"{self._prefix}{serial}"
                    await publish(subject, data, reply=reply, headers=headers)
                except Exception:
                    del self.waiting[serial]
                    raise
                sent += 1
        except Exception as exc:
            chunk.fail(describe(exc))
            for delivery, *_ in moves[sent:]:
                self._answered(chunk, delivery, chunk.unknown)

    async def _start(self) -> None:
        """Subscribe to the inbox the stream answers to (once)."""
        if self._sub is None:
            inbox = self.client.new_inbox()
            self._prefix = f"{inbox}."
            self._sub = await self.client.subscribe(f"{inbox}.*", cb=self.on_answer)

    async def on_answer(self, message: Any) -> None:
        """The stream's answer to one publish: stored, or why not."""
        try:
            serial = int(message.subject[len(self._prefix) :])
        except ValueError:
            return
        waiting = self.waiting.pop(serial, None)
        if waiting is None:
            return  # answered after its chunk gave up on it
        chunk, delivery = waiting
        why = refusal(message.headers, message.data)
        if why is not None:
            chunk.fail(why)
        self._answered(chunk, delivery, chunk.stored if why is None else chunk.refused)

    def _answered(self, chunk: Moved, delivery: Delivery, into: list[Delivery]) -> None:
        into.append(delivery)
        chunk.left -= 1
        if chunk.left == 0:
            self._settle(chunk)

    def _expire(self, chunk: Moved) -> None:
        """A chunk's time is up: what is still unanswered is unknown."""
        chunk.fail(f"no answer from the stream in {self.timeout_seconds:g} s")
        late = [s for s, (owner, _) in self.waiting.items() if owner is chunk]
        for serial in late:
            _, delivery = self.waiting.pop(serial)
            self._answered(chunk, delivery, chunk.unknown)

    def _settle(self, chunk: Moved) -> None:
        if chunk.timer is not None:
            chunk.timer.cancel()
        self.chunks.discard(chunk)
        if not self.chunks:
            self.drained.set()
        settling = asyncio.ensure_future(self.on_moved(chunk))
        self.settling.add(settling)
        settling.add_done_callback(self.settling.discard)

    async def stop(self) -> None:
        """Wait for the chunks in flight (each ends by its timeout); unsubscribe."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.drained.wait(), self.timeout_seconds + 1.0)
        if self.settling:
            await asyncio.wait(set(self.settling))
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def refusal(headers: Mapping[str, str] | None, data: bytes) -> str | None:
    """Why the stream did not store a message, from its answer (None: stored).

    :param headers: the answer's headers (a status when nobody answered).
    :param data: the answer: a ``PubAck`` or an error, as JSON.
    :return: the reason, or None when it was stored (a duplicate too).
    """
    if headers and headers.get("Status") == NO_RESPONDERS:
        return "no stream listens on the batched task's subject"
    if b'"error"' not in data:
        return None
    try:
        error = json.loads(data).get("error")
    except (ValueError, AttributeError):
        return f"unreadable answer {data[:200]!r}"
    if not error:
        return None  # "error" was in a name (a stream called so)
    described = error.get("description") if isinstance(error, dict) else None
    return str(described or error)
