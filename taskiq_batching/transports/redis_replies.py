"""Reading a stream: the packed-read script, and replies of either shape.

``XREADGROUP`` replies come packed by the script (``[[stream, [[id,
[field, value, ...]]]]]``) or parsed by redis-py, whose shape depends on
its protocol and version: a list of ``[stream, entries]`` or a dict of
``stream: entries``, the entries possibly wrapped in one more list, each
``(id, {field: value})``. ``entries`` reads them all.
"""

from collections.abc import Iterator
from typing import Any

#: XREADGROUP of KEYS (streams) from ARGV[4..] (one id each) for group
#: ARGV[1], consumer ARGV[2], COUNT ARGV[3]; the reply packed with
#: MessagePack, or false when nothing waits. Never blocks. A server
#: without ``cmsgpack`` gets an error before anything is read: a script's
#: writes are not undone when it fails, and entries read by a failed
#: script would stay pending, delivered to nobody.
READ_PACKED = """
local found, pack = pcall(function() return cmsgpack.pack end)
if not found or type(pack) ~= 'function' then
  return redis.error_reply('NOPACK cmsgpack is not available')
end
local command = {'XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS'}
for i = 1, #KEYS do command[#command + 1] = KEYS[i] end
for i = 4, #ARGV do command[#command + 1] = ARGV[i] end
local reply = redis.call(unpack(command))
if not reply then return false end
return pack(reply)
"""


def entries(reply: Any) -> Iterator[tuple[str, bytes, bytes]]:
    """The ``(stream, entry id, data)`` of each entry of a reply, in order.

    :param reply: an XREADGROUP reply, packed or parsed by redis-py.
    :yield: each entry (deleted entries, whose id comes alone, are skipped).
    """
    if not reply:
        return
    streams = reply.items() if isinstance(reply, dict) else reply
    for raw_stream, raw_entries in streams:
        stream = raw_stream.decode() if isinstance(raw_stream, bytes) else raw_stream
        found = raw_entries
        if len(found) == 1 and _is_entries(found[0]):
            found = found[0]
        for entry_id, fields in found:
            if entry_id is not None:
                yield stream, entry_id, _field(fields, b"data")


def _is_entries(value: Any) -> bool:
    """Whether ``value`` is a list of entries rather than one entry."""
    return isinstance(value, list) and (
        not value or isinstance(value[0], (list, tuple))
    )


def _field(fields: Any, name: bytes) -> bytes:
    """A field's value: fields as a dict (redis-py) or a flat list (packed).

    An entry without it (written by someone else) gets empty data, which
    the worker hands to taskiq, which reports and acks it as undecodable.
    """
    value = None
    if isinstance(fields, dict):
        value = fields.get(name)
    elif isinstance(fields, list):
        if len(fields) == 2 and fields[0] == name:  # what taskiq-redis writes
            value = fields[1]
        else:
            value = dict(zip(fields[::2], fields[1::2], strict=False)).get(name)
    return value if isinstance(value, bytes) else b""
