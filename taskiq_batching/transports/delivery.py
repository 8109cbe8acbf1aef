"""One message as a transport read it (``Delivery``), and the send-time label."""

from dataclasses import dataclass
from typing import Any

from taskiq import AckableMessage

#: The label (an AMQP header on the wire) in which the plugin's producer
#: puts a batched message's send time, epoch seconds, for a transport whose
#: broker keeps no send time of its own (``stamps_sent_at``).
SENT_AT_LABEL = "batch_sent_at"


@dataclass(slots=True)
class Delivery:
    """One message as a transport read it.

    :param data: the message's bytes.
    :param handle: what acking or releasing it takes (a stream entry, an
        AMQP delivery tag, an ack callable...); None when it has no ack. A
        handle whose ``needs_ack`` is False is released, never acked (a
        message taken from a Redis list has no ack, as one read).
    :param original: what the broker's own listener yielded, handed to
        taskiq's Receiver as it is (generic transport only).
    :param sent_at: when the message was sent (epoch seconds, the broker's or
        producer's clock), if known: a buffer's batch_timeout counts from its
        first message's sent_at (else from when it was read).
    """

    data: bytes
    handle: Any = None
    original: bytes | AckableMessage | None = None
    sent_at: float | None = None
