"""When a buffer becomes a batch: the one place flushing is decided.

* ``size``: it holds ``batch_size`` messages;
* ``timeout``: ``batch_timeout`` seconds after its first message (after
  the earliest send time its messages' deliveries know, ``Held.sent_at``);
* ``pressure``: the process holds all it may hold of the task and every
  held message sits in a buffer, so nothing else would ever free room
  (several partial buffers, a size-only task); or the broker stops
  delivering until something is acked (its prefetch, see ``relieve_all``);
* ``shutdown``: the worker stops; from then on each message is flushed on
  the next event-loop turn;
* ``inplace``: on ``InMemoryBroker(await_inplace=True)`` each sender waits
  for its result, so buffers flush on the next event-loop turn (messages
  sent in the same turn share a batch);
* ``manual``: ``BatchingMiddleware.flush()``;
* ``keys``: a new key would exceed ``batch_max_keys``: the task's oldest
  open buffer flushes;
* ``cost``: the next item would exceed ``batch_max_cost``, or one item's
  cost alone does (it then runs alone);
* ``bytes``: the next message would take the buffer's wire bytes over
  ``batch_max_bytes``, or it reached them, or one message alone is bigger
  (it then runs alone);
* ``deadline``: an item's ``batch_deadline`` is due: its batch starts now.

A batch taken whole from the broker (``wait_in_broker``) goes through
these rules message by message; then ``flush_taken``.

``batch_min_size`` holds back a timer: a buffer below it is not flushed
by ``batch_timeout`` but by ``batch_max_wait`` (every other reason still
flushes it).

The rules act on the buffers through ``ports.Buffers``, the little of
the batcher they need.
"""

import logging
from collections.abc import Sequence

from taskiq_batching.core import timers
from taskiq_batching.core.buffer import Buffer, Held
from taskiq_batching.core.policies import Placement
from taskiq_batching.core.ports import Buffers, Key
from taskiq_batching.settings import FlushReason
from taskiq_batching.spec import BatchSpec

logger = logging.getLogger("taskiq_batching")


#: A deadline's batch is flushed this many seconds early, so that it starts
#: (on the next event-loop turns) before the deadline.
DEADLINE_LEAD = 0.005


class FlushRules:
    """Decides when buffers flush.

    :param batcher: the buffers these rules flush.
    """

    def __init__(self, batcher: Buffers) -> None:
        self.batcher = batcher
        #: Flush on the next loop turn: the worker is stopping.
        self.closing = False
        #: Flush on the next loop turn: senders wait for each result.
        self.eager = False
        self._linger_scheduled = False

    def reset(self) -> None:
        """Forget a flush scheduled on an earlier event loop."""
        self._linger_scheduled = False

    def opened(self, spec: BatchSpec, buffer: Buffer) -> None:
        """A buffer is about to get its first message: bound its task's keys.

        Its timer starts in ``added``, from that message's send time.

        :param spec: its task's spec.
        :param buffer: the new buffer.
        """
        settings = spec.settings
        max_keys = settings.max_keys
        if max_keys is not None and self.batcher.open_keys[spec.task_name] > max_keys:
            oldest = next(
                key
                for key, open_buffer in self.batcher.buffers.items()
                if key[0] == spec.task_name and open_buffer is not buffer
            )
            self.batcher.flush(oldest, FlushReason.KEYS)

    def _timer(self, key: Key) -> None:
        """``batch_timeout`` passed: flush, unless ``batch_min_size`` holds it."""
        timers.expire(self.batcher, key, self.closing)

    def full(
        self,
        spec: BatchSpec,
        buffer: Buffer,
        placement: Placement | None,
        size: int,
    ) -> FlushReason | None:
        """Whether an open buffer must flush before this message joins it.

        :param spec: its task's spec.
        :param buffer: the open buffer.
        :param placement: the message's placement, when policies apply.
        :param size: the message's wire bytes.
        :return: ``cost`` when it would exceed ``batch_max_cost``, ``bytes``
            when it would exceed ``batch_max_bytes``, else None.
        """
        settings = spec.settings
        budget = settings.max_cost
        if (
            placement is not None
            and budget is not None
            and buffer.cost + placement.cost > budget
        ):
            return FlushReason.COST
        limit = settings.max_bytes
        if limit is not None and buffer.size + size > limit:
            return FlushReason.BYTES
        return None

    def added(
        self,
        spec: BatchSpec,
        buffer: Buffer,
        placement: Placement | None,
        now: float,
    ) -> None:
        """A message was added to a buffer: flush it if it is due.

        :param spec: its task's spec.
        :param buffer: the buffer.
        :param placement: the message's placement, when policies apply.
        :param now: the event loop's time when it was added.
        """
        newest = buffer.items[-1]
        sent = getattr(newest.delivery, "sent_at", None)
        # What ``timers.start`` would find, without its calls (it runs per
        # message): a running timer, and a message taken after the buffer
        # opened, with no send time or one no earlier than the send time
        # the buffer's start came from, leave the timer as it is.
        if (
            buffer.timer is None
            or (
                sent is not None
                and not (type(sent) is float and sent >= buffer.sent_floor)
            )
            or newest.arrived < buffer.opened_at
        ):
            timers.start(self.batcher, spec, buffer, now, self.closing, self._timer)
        settings = spec.settings
        if len(buffer.items) >= settings.batch_size:
            self.batcher.flush((buffer.task_name, buffer.key), FlushReason.SIZE)
            return
        if placement is not None and self._placed(spec, buffer, placement):
            return
        if settings.max_bytes is not None and self._sized(spec, buffer):
            return
        if buffer.overdue and len(buffer.items) >= (settings.min_size or 0):
            self.batcher.flush((buffer.task_name, buffer.key), FlushReason.TIMEOUT)
            return
        if self.closing or self.eager:
            self._linger()
        else:
            name = spec.task_name
            # ``relieve``'s first test, before its call: it runs per message.
            if self.batcher.waiting[name] >= self.batcher.held[name]:
                self.relieve(name)

    def _placed(self, spec: BatchSpec, buffer: Buffer, placement: Placement) -> bool:
        """Apply the message's cost and deadline; whether its buffer flushed."""
        key = (buffer.task_name, buffer.key)
        buffer.cost += placement.cost
        budget = spec.settings.max_cost
        if budget is not None and buffer.cost >= budget:
            if len(buffer.items) == 1 and buffer.cost > budget:
                logger.warning(
                    "taskiq_batching: message %s of %s costs %s, over batch_max_cost "
                    "%s: it runs alone",
                    buffer.items[0].task_id,
                    spec.task_name,
                    placement.cost,
                    budget,
                )
            self.batcher.flush(key, FlushReason.COST)
            return True
        deadline = placement.deadline
        if deadline is None:
            return False
        loop = self.batcher.bind_loop()
        if deadline - DEADLINE_LEAD <= loop.time():
            self.batcher.flush(key, FlushReason.DEADLINE)
            return True
        if buffer.deadline is None or deadline < buffer.deadline:
            buffer.deadline = deadline
            if buffer.deadline_timer is not None:
                buffer.deadline_timer.cancel()
            buffer.deadline_timer = loop.call_at(
                deadline - DEADLINE_LEAD,
                self.batcher.flush,
                key,
                FlushReason.DEADLINE,
            )
        return False

    def _sized(self, spec: BatchSpec, buffer: Buffer) -> bool:
        """Flush a buffer that reached ``batch_max_bytes``; whether it flushed."""
        limit = spec.settings.max_bytes
        if limit is None or buffer.size < limit:
            return False
        if len(buffer.items) == 1 and buffer.size > limit:
            logger.warning(
                "taskiq_batching: message %s of %s is %d bytes, over batch_max_bytes "
                "%d: it runs alone",
                buffer.items[0].task_id,
                spec.task_name,
                buffer.size,
                limit,
            )
        self.batcher.flush((buffer.task_name, buffer.key), FlushReason.BYTES)
        return True

    def flush_taken(
        self, taken: Sequence[tuple[Held, FlushReason]]
    ) -> list[tuple[Key, Held]]:
        """Flush the buffers that messages of due taken batches landed in.

        The rules above split it already, message by message. What is left
        of a batch taken by a deadline (``timeout``, ``deadline``) runs at
        once; what is left of one taken full lost messages (rejected,
        filtered): it stays open for what it lacks (``worker/taken.py``).

        :param taken: each message held and its batch's reason.
        :return: the buffers left open, each with one of its taken messages.
        """
        reasons = {id(held): reason for held, reason in taken}
        left: list[tuple[Key, Held]] = []
        for key, buffer in list(self.batcher.buffers.items()):
            found = [h for h in buffer.items if id(h) in reasons]
            if not found:
                continue
            due = [reasons[id(h)] for h in found if reasons[id(h)] != FlushReason.SIZE]
            if due:
                self.batcher.flush(key, due[0])
            else:
                left.append((key, found[0]))
        return left

    def relieve(self, task_name: str, full: bool = False) -> None:
        """Flush a task's buffers if they hold all it may hold: nothing else would.

        :param task_name: a batched task.
        :param full: the task is at its byte bound (its message bound is
            checked here).
        """
        batcher = self.batcher
        held = batcher.held[task_name]
        # The counts first: while batches run, fewer are buffered than held,
        # and the task's bound (a computed setting) is not needed.
        if batcher.waiting[task_name] >= held > 0 and (
            full or held >= batcher.specs[task_name].settings.max_held
        ):
            batcher.flush_all(FlushReason.PRESSURE, task_name)

    def relieve_all(self) -> None:
        """The broker delivers nothing more until something is acked: flush all."""
        self.batcher.flush_all(FlushReason.PRESSURE)

    def _linger(self) -> None:
        if not self._linger_scheduled:
            self._linger_scheduled = True
            self.batcher.bind_loop().call_soon(self._flush_lingering)

    def _flush_lingering(self) -> None:
        self._linger_scheduled = False
        reason = FlushReason.SHUTDOWN if self.closing else FlushReason.INPLACE
        self.batcher.flush_all(reason)
