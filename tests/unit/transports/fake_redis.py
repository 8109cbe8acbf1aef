"""A fake Redis server on loopback, for what fakeredis cannot show.

It answers every command ``+OK``, except the handshake's ``HELLO``, which
it answers as Redis 7 does: with the server's properties, a map in RESP3
(``HELLO 3``, sent by redis-py 8.2 by default and by any client given
``protocol=3``) and a flat array in RESP2 (``HELLO 2``). Clients that send
no ``HELLO`` (redis-py 8.1 by default) speak RESP2 from the start. A test
can make it go silent: it then withholds replies, and answers them late
(as errors) once it speaks again.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

#: HELLO's properties, in the order Redis 7 gives them (``proto`` filled in).
_PROPERTIES = (
    (b"server", b"+redis"),
    (b"version", b"+7.0.0"),
    (b"proto", None),
    (b"id", b":1"),
    (b"mode", b"+standalone"),
    (b"role", b"+master"),
    (b"modules", b"*0"),
)


def hello_reply(protocol: int) -> bytes:
    """What Redis answers to ``HELLO <protocol>``.

    :param protocol: 2 or 3.
    :return: a RESP3 map for 3; for 2 the same pairs as one flat array.
    """
    head = (
        b"%%%d\r\n" % len(_PROPERTIES)
        if protocol == 3
        else b"*%d\r\n" % (2 * len(_PROPERTIES))
    )
    body = b"".join(
        b"+%s\r\n%s\r\n" % (name, value or b":%d" % protocol)
        for name, value in _PROPERTIES
    )
    return head + body


def split_commands(buffer: bytes) -> tuple[list[list[bytes]], bytes]:
    """The whole RESP commands the buffer starts with, and the rest.

    :param buffer: bytes received, possibly ending in part of a command.
    :return: each command's arguments, and the bytes left over.
    """
    found: list[list[bytes]] = []
    while True:
        rest = buffer
        args: list[bytes] = []
        try:
            header, rest = rest.split(b"\r\n", 1)
            for _ in range(int(header[1:])):
                length, rest = rest.split(b"\r\n", 1)
                size = int(length[1:])
                if len(rest) < size + 2:
                    return found, buffer
                args.append(rest[:size])
                rest = rest[size + 2 :]
        except ValueError:
            return found, buffer
        found.append(args)
        buffer = rest


def reply_to(args: list[bytes]) -> bytes:
    """The answer to one command: HELLO's properties, ``+OK`` to the rest.

    :param args: the command's name and arguments.
    :return: its reply.
    """
    if args and args[0].upper() == b"HELLO":
        return hello_reply(int(args[1]) if len(args) > 1 else 2)
    return b"+OK\r\n"


class FakeRedis:
    """The server's state: what it heard, and whether it answers."""

    def __init__(self) -> None:
        self.silent = False
        #: Every command heard, on any connection.
        self.commands: list[list[bytes]] = []
        self.heard_while_silent = asyncio.Event()

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One connection: answer each command in order (unless silent)."""
        buffer = b""
        unanswered = 0  # on this connection, answered late (as errors)
        try:
            while data := await reader.read(65536):
                commands, buffer = split_commands(buffer + data)
                self.commands.extend(commands)
                if self.silent:
                    unanswered += len(commands)
                    if commands:
                        self.heard_while_silent.set()
                elif commands:
                    late = b"-ERR late reply\r\n" * unanswered
                    writer.write(late + b"".join(map(reply_to, commands)))
                    unanswered = 0
                    await writer.drain()
        finally:
            writer.close()

    def heard(self, name: bytes) -> list[list[bytes]]:
        """The commands of that name heard so far."""
        return [args for args in self.commands if args[0].upper() == name]


@asynccontextmanager
async def fake_redis() -> AsyncIterator[tuple[FakeRedis, int]]:
    """A fake server listening on a free loopback port, and the port."""
    server = FakeRedis()
    listening = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    try:
        yield server, listening.sockets[0].getsockname()[1]
    finally:
        listening.close()
        await listening.wait_closed()
