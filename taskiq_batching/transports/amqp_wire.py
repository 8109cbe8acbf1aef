"""The frames of a forwarded message, encoded by hand (AMQP 0-9-1).

aiormq's ``basic_publish`` encodes each message's frames with pamqp
(its headers table field by field), takes the channel's lock, a drain
future and a confirmation future, and writes it with a system call of its
own: under cProfile, a third of a forwarding worker's CPU (10.6 of
32.3 s for 10,000 messages, ``bench.cpu_profile``-style, N = 1). A
forwarded message always has the same shape: ``basic.publish`` on the
default exchange, a content header with two text headers (task name, send
time) and ``delivery_mode`` 2, and its body; ``publish_frames`` encodes
that directly, and a chunk goes out in one write
(``_compat.amqp_publish_frames``).
"""

import struct

#: Frame types, and the octet that ends every frame.
METHOD, HEADER, BODY = 1, 2, 3
FRAME_END = b"\xce"
FRAME_HEAD = struct.Struct(">BHI")
#: ``basic.publish`` (class 60, method 40), reserved short, exchange "".
PUBLISH_HEAD = struct.Struct(">HHHB").pack(60, 40, 0, 0)
#: Content header: class 60, weight 0, body size; then the property flags.
CONTENT_HEAD = struct.Struct(">HHQH")
#: Property flags: a headers table, a delivery mode.
HEADERS, DELIVERY_MODE = 0x2000, 0x1000
PERSISTENT = b"\x02"
LONG = struct.Struct(">I")


def _short_string(text: str) -> bytes:
    data = text.encode()
    if len(data) > 255:
        raise ValueError(f"AMQP short string over 255 bytes: {text[:40]!r}...")
    return bytes([len(data)]) + data


def _table(headers: dict[str, str]) -> bytes:
    """An AMQP field table of long strings (type ``S``)."""
    fields = b"".join(
        _short_string(key) + b"S" + LONG.pack(len(value)) + value
        for key, value in ((k, v.encode()) for k, v in headers.items())
    )
    return LONG.pack(len(fields)) + fields


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return FRAME_HEAD.pack(kind, channel, len(payload)) + payload + FRAME_END


def publish_frames(
    channel: int,
    routing_key: str,
    headers: dict[str, str],
    body: bytes,
    max_body_frame: int,
) -> bytes:
    """One persistent message published to a queue through the default exchange.

    :param channel: the channel's number.
    :param routing_key: the queue.
    :param headers: text headers.
    :param body: the message's bytes.
    :param max_body_frame: the most bytes of body in one frame (the
        connection's ``frame_max`` less a frame's 8 bytes of framing).
    :return: the method, content header and body frames, concatenated.
    """
    method = PUBLISH_HEAD + _short_string(routing_key) + b"\x00"  # no flags
    properties = _table(headers) + PERSISTENT
    header = CONTENT_HEAD.pack(60, 0, len(body), HEADERS | DELIVERY_MODE)
    parts = [
        _frame(METHOD, channel, method),
        _frame(HEADER, channel, header + properties),
    ]
    for start in range(0, len(body), max_body_frame):
        parts.append(_frame(BODY, channel, body[start : start + max_body_frame]))
    return b"".join(parts)
