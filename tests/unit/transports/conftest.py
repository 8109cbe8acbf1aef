"""fakeredis for the Redis transports, and a log of the commands they send."""

from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
from redis.asyncio.client import Pipeline, Redis


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def protocol() -> int | None:
    """The RESP version brokers and backends speak (None: redis-py's default).

    A test parametrizes it to run on RESP2 and RESP3 clients.
    """
    return None


@pytest.fixture
def fake(server: fakeredis.FakeServer, protocol: int | None) -> dict[str, Any]:
    """Keyword arguments that put a taskiq-redis broker or backend on fakeredis."""
    options: dict[str, Any] = {
        "connection_class": fakeredis.FakeAsyncRedisConnection,
        "server": server,
    }
    if protocol is not None:
        options["protocol"] = protocol
    return options


@pytest.fixture
async def redis(server: fakeredis.FakeServer) -> AsyncIterator[Any]:
    """A client of the same fake server, to look at what the transports did."""
    client = fakeredis.FakeAsyncRedis(server=server)
    yield client
    await client.aclose()


class CommandLog:
    """Every command redis-py sends, alone or in a pipeline, by name."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for command, args in self.commands if command == name.upper()]

    def clear(self) -> None:
        self.commands.clear()


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> CommandLog:
    log = CommandLog()
    direct: Any = Redis.execute_command
    queued: Any = Pipeline.pipeline_execute_command

    async def execute_command(self: Redis, *args: Any, **options: Any) -> Any:
        log.commands.append((str(args[0]).upper(), args[1:]))
        return await direct(self, *args, **options)

    def pipeline_execute_command(self: Pipeline, *args: Any, **options: Any) -> Any:
        log.commands.append((str(args[0]).upper(), args[1:]))
        return queued(self, *args, **options)

    monkeypatch.setattr(Redis, "execute_command", execute_command)
    monkeypatch.setattr(Pipeline, "pipeline_execute_command", pipeline_execute_command)
    return log
