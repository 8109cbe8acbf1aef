"""Whether a worker's own share of a task's rate fills its batches.

Forwarding a plain producer's message to where its task's batches wait
buys fill only while the workers' shares are too small to fill a batch
each within ``batch_timeout``. Past that, a worker's own reads fill its
batches as on the default path, and on RabbitMQ a forward costs a second
durable publish per message: with four workers at 2,000 msg/s on a
2-core machine, forwarded messages started 1.4-1.5 s after their send
(p99) against 0.27-0.59 s on the default path (docs/fleet.md, seventh
session). A forwarder that says so (``forward_only_to_fill``) has the
router batch such a task's messages where they are read while this
worker reads a batch's worth of them within ``batch_timeout``, and
forward again once it reads fewer than half that (a margin, so that a
worker near the edge does not split its reads between both ways). A
keyed task is always forwarded: its keys split each worker's share.
"""

from taskiq_batching.spec import BatchSpec


class OwnShare:
    """Per task, the times of this worker's last ``batch_size`` reads of it.

    :param spec: the task.
    """

    __slots__ = ("_filling", "_half", "_next", "_reads", "_window")

    def __init__(self, spec: BatchSpec) -> None:
        size = spec.settings.batch_size
        timeout = spec.settings.batch_timeout
        # Loop times of the last ``size`` reads, a ring; -inf: none yet.
        self._reads = [float("-inf")] * size
        self._next = 0
        self._half = max(size // 2, 1)
        self._window = float("inf") if timeout is None else -timeout
        self._filling = False

    @property
    def filling(self) -> bool:
        """Whether this worker's last reads of the task filled its batches here."""
        return self._filling

    def read(self, now: float) -> bool:
        """Count a read at loop time ``now``; whether to batch it where read.

        :param now: the event loop's time of the read, in seconds.
        :return: True while this worker's reads fill a batch within
            ``batch_timeout`` (never for a task without one).
        """
        reads = self._reads
        reads[self._next] = now
        self._next = (self._next + 1) % len(reads)
        since = now + self._window
        if self._filling:
            # The half-batch-th newest read is older than the timeout:
            # fewer than half a batch within it.
            self._filling = reads[(self._next - self._half) % len(reads)] >= since
        else:
            # The oldest of the last batch_size reads is within it.
            self._filling = reads[self._next] >= since
        return self._filling
