"""When a buffer becomes a batch: the one place flushing is decided.

* ``size``: it holds ``batch_size`` messages;
* ``timeout``: ``batch_timeout`` seconds after its first message;
* ``pressure``: the process holds all it may hold of the task and every
  held message sits in a buffer, so nothing else would ever free room
  (several partial buffers, a size-only task); or the broker stops
  delivering until something is acked (its prefetch, see ``relieve_all``);
* ``shutdown``: the worker stops; from then on each message is flushed on
  the next event-loop turn;
* ``inplace``: on ``InMemoryBroker(await_inplace=True)`` each sender waits
  for its result, so buffers flush on the next event-loop turn (messages
  sent in the same turn share a batch);
* ``manual``: ``BatchingMiddleware.flush()``.
"""

from typing import TYPE_CHECKING

from taskiq_batching.core.buffer import Buffer
from taskiq_batching.core.run import BatchSpec
from taskiq_batching.settings import FlushReason

if TYPE_CHECKING:
    from taskiq_batching.core.batcher import Batcher


class FlushRules:
    """Decides when the batcher's buffers flush.

    :param batcher: the batcher whose buffers these rules flush.
    """

    def __init__(self, batcher: "Batcher") -> None:
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
        """A buffer got its first message: start its timer.

        :param spec: its task's spec.
        :param buffer: the new buffer.
        """
        timeout = spec.settings.batch_timeout
        if timeout is not None and not self.closing:
            loop = self.batcher.bind_loop()
            buffer.timer = loop.call_later(
                timeout,
                self.batcher.flush,
                (buffer.task_name, buffer.key),
                FlushReason.TIMEOUT,
            )

    def added(self, spec: BatchSpec, buffer: Buffer) -> None:
        """A message was added to a buffer: flush it if it is due.

        :param spec: its task's spec.
        :param buffer: the buffer.
        """
        if len(buffer.items) >= spec.settings.batch_size:
            self.batcher.flush((buffer.task_name, buffer.key), FlushReason.SIZE)
        elif self.closing or self.eager:
            self._linger()
        else:
            self.relieve(spec.task_name)

    def relieve(self, task_name: str) -> None:
        """Flush a task's buffers if they hold all it may hold: nothing else would.

        :param task_name: a batched task.
        """
        batcher = self.batcher
        held = batcher.held[task_name]
        if (
            held >= batcher.specs[task_name].settings.max_held
            and batcher.buffered(task_name) >= held
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
