"""A delivery's send time, from its AMQP properties, read defensively.

The plugin's producer puts the send time (epoch seconds) in the
``SENT_AT_LABEL`` label, which taskiq-aio-pika sends as a header (as
text: taskiq turns label values into strings); any
producer may set the AMQP ``timestamp`` property instead (whole
seconds). Headers are the sender's: a value of another type, not finite,
or anything that fails to convert is ignored (the message's timer then
counts from its read, as without a send time); core bounds the rest.

A message the plugin's producer sent to the main queue because its
task's queue was full (``amqp_overflow.py``) also carries the
``OVERFLOW_LABEL`` header: its send time is read as ``Overflowed``, which
tells the worker to batch it where it read it (``AmqpBatches.waited``)
instead of forwarding it back to the full queue.
"""

import datetime
import math
from decimal import Decimal
from typing import Any

from taskiq_batching.transports.delivery import SENT_AT_LABEL

#: The header (a label of the kicked message) that marks a message its
#: task's full queue refused (``amqp_overflow.py``).
OVERFLOW_LABEL = "batch_overflow"


class Overflowed(float):
    """A send time (epoch seconds) of a message its task's full queue refused.

    It is a send time like any other for the buffers; its type tells the
    worker not to forward the message (``AmqpBatches.waited``). The send
    time carries the mark so that it travels every path a delivery's
    properties are read on (the frame reader, the tap, aio-pika's callback)
    without a field of its own.
    """

    __slots__ = ()


def sent_at_of(headers: Any, timestamp: Any) -> float | None:
    """The send time a delivery's properties carry.

    :param headers: its ``headers`` table (a dict, or None).
    :param timestamp: its ``timestamp`` property (a datetime, or None).
    :return: epoch seconds (``Overflowed`` with the ``OVERFLOW_LABEL``
        header), or None when neither holds a usable one.
    """
    if isinstance(headers, dict):
        sent_at = _seconds(headers.get(SENT_AT_LABEL))
        if sent_at is not None:
            return Overflowed(sent_at) if OVERFLOW_LABEL in headers else sent_at
    if isinstance(timestamp, datetime.datetime):
        try:
            if timestamp.tzinfo is None:  # AMQP timestamps are UTC
                timestamp = timestamp.replace(tzinfo=datetime.timezone.utc)
            return _seconds(timestamp.timestamp())
        except (OverflowError, ValueError, OSError):
            return None
    return None


def properties_sent_at(properties: Any) -> float | None:
    """The send time in a content header's properties (``pamqp``'s).

    :param properties: the frame's ``Basic.Properties``, or anything.
    :return: epoch seconds, or None.
    """
    return sent_at_of(
        getattr(properties, "headers", None), getattr(properties, "timestamp", None)
    )


#: A header longer than this is no number of seconds the producer wrote.
MAX_TEXT_CHARS = 40


def _seconds(value: Any) -> float | None:
    if isinstance(value, str):
        # taskiq sends labels as text (with ``labels_types``).
        if len(value) > MAX_TEXT_CHARS:
            return None
    elif isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    try:
        seconds = float(value)
    except (OverflowError, ValueError, ArithmeticError):
        return None
    return seconds if math.isfinite(seconds) else None
