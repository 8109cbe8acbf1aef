"""The names of a batched task's keys in Redis, and the handles of their entries.

See ``redis_batches``: per task, a stream per key, a sorted set of keys,
a sorted set of the keys' earliest deadlines, a wake stream and a hash of
the keys being read (``redis_batches_lua``), all under the hash tag
``{<queue>:<task>}`` (one cluster slot per task).
"""

import binascii
from typing import Any


class TaskStreams:
    """The names of one batched task's keys in Redis.

    :param queue: the broker's stream.
    :param task_name: the task.
    """

    __slots__ = ("due", "keys", "prefix", "taking", "wake")

    def __init__(self, queue: str, task_name: str) -> None:
        tag = "{" + f"{queue}:{task_name}".replace("{", "(").replace("}", ")") + "}"
        self.prefix = f"{tag}:q:"
        self.keys = f"{tag}:keys"
        self.wake = f"{tag}:wake"
        #: A sorted set: a key's earliest ``batch_deadline`` (ms), if any.
        self.due = f"{tag}:due"
        #: A hash: the keys a stream take reserved, for whom, until when.
        self.taking = f"{tag}:taking"

    def stream(self, key: str) -> str:
        """The stream of one key.

        :param key: the key (``broker_key``).
        :return: its stream's name.
        """
        return self.prefix + key


class TaskEntry(tuple[str, bytes]):
    """The handle of an entry on a task's key stream: ``(stream, id)``.

    Equal to the plain tuple (the transport's acks and refreshes take it
    as any entry), with what sending it back needs: its task's names and
    key (``place``, shared by a batch), and the time its deadline counts
    from (``sent_ms``: its field ``t`` when forwarded, else its id's).
    """

    place: "tuple[TaskStreams, str]"
    #: None unless forwarded: a producer's entry sets no attribute for it.
    t_ms: int | None = None

    def __new__(
        cls,
        stream: str,
        entry_id: bytes,
        place: "tuple[TaskStreams, str]",
        t_ms: int | None = None,
    ) -> "TaskEntry":
        """The handle.

        :param stream: the key stream.
        :param entry_id: the entry's id.
        :param place: its task's names and its key.
        :param t_ms: its field ``t`` (a forwarded entry's send time), if any.
        :return: the handle.
        """
        entry = super().__new__(cls, (stream, entry_id))
        entry.place = place
        if t_ms is not None:
            entry.t_ms = t_ms
        return entry

    @property
    def names(self) -> "TaskStreams":
        """Its task's names."""
        return self.place[0]

    @property
    def key(self) -> str:
        """Its key."""
        return self.place[1]

    @property
    def sent_ms(self) -> int:
        """When it was sent (its deadline counts from it), in ms."""
        return entry_ms(self[1]) if self.t_ms is None else self.t_ms


def entry_ms(entry_id: Any) -> int:
    """A stream entry id's time (when Redis added it), in ms.

    :param entry_id: ``<ms>-<seq>``, bytes or str.
    :return: the ms.
    """
    if isinstance(entry_id, bytes):  # as read: int() takes the digits as bytes
        return int(entry_id.partition(b"-")[0])
    return int(str(entry_id).partition("-")[0])


def slot_of(name: str) -> int:
    """A tagged name's Redis Cluster slot: CRC16 (XMODEM) of its tag.

    :param name: a name made by ``TaskStreams``.
    :return: its slot.
    """
    tag = name[1 : name.index("}")]
    return binascii.crc_hqx(tag.encode(), 0) % 16384


def text_of(value: Any) -> str:
    """A reply's bytes as text.

    :param value: bytes or str.
    :return: the text.
    """
    return value.decode() if isinstance(value, bytes) else str(value)
