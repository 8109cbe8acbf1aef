"""What a JetStream message's reply (ack) subject and headers tell of it.

Its stream sequence, how many times it was delivered, and when the
stream stored it (the server's clock): a batch's deadline counts from
the send, not from a worker's read. Read from the subject the server
gave, parsed once per message.
"""

import contextlib
from typing import Any


def delivery_facts(reply: str) -> tuple[int, int, float | None]:
    """What a JetStream message's ack subject tells, read at once.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer
    seq>.<stored at>...`` (9 tokens), or with a domain and an account hash
    after ``ACK`` (11 or 12 tokens).

    :param reply: the message's reply subject.
    :return: its sequence in the stream, how many times it was delivered,
        and when the stream stored it (seconds since the epoch, server
        clock; None when the subject has no time).
    """
    tokens = reply.split(".")
    at = 5 if len(tokens) == 9 else 7
    try:
        stored_at: float | None = int(tokens[at + 2]) / 1e9
    except (IndexError, ValueError):
        stored_at = None
    return int(tokens[at]), int(tokens[at - 1]), stored_at


def stream_pending(reply: str) -> int:
    """Messages the consumer had left to deliver after this one (its ack subject).

    :param reply: a JetStream message's reply subject (see ``delivery_facts``).
    :return: that count (0 when the subject has none).
    """
    tokens = reply.split(".")
    try:
        return int(tokens[8 if len(tokens) == 9 else 10])
    except (IndexError, ValueError):
        return 0


def stream_sequence(reply: str) -> tuple[int, int]:
    """The stream sequence and delivery count of a JetStream message.

    :param reply: the message's reply subject (see ``delivery_facts``).
    :return: its sequence in the stream, and how many times it was delivered.
    """
    sequence, delivered, _ = delivery_facts(reply)
    return sequence, delivered


#: Header carrying the original send time of a message published again
#: (moved to its task's subject, or given back to the tail of the stream).
SENT_AT = "Tb-Sent-At"


def message_sent_at(reply: str, headers: Any) -> float | None:
    """A message's send time: its ``Tb-Sent-At`` header, else its stream's.

    :param reply: its reply subject.
    :param headers: its headers (None when it has none).
    :return: seconds since the epoch, or None when unknown.
    """
    if headers:
        with contextlib.suppress(TypeError, ValueError):
            return float(headers.get(SENT_AT))
    return stream_timestamp(reply)


def stream_timestamp(reply: str) -> float | None:
    """When the stream stored a JetStream message: its send time, server clock.

    :param reply: the message's reply subject (see ``delivery_facts``).
    :return: seconds since the epoch, or None when the subject has none.
    """
    try:
        return delivery_facts(reply)[2]
    except (IndexError, ValueError):
        return None
