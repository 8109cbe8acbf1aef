"""``kiq_many`` when a connection is lost mid-send: no message is added twice.

Every taskiq-redis broker (stream and list; standalone, sentinel, cluster)
on private servers. A fault is injected at a fixed point of the send:

* the reply is lost after the server ran every command (the connection
  closed under the client, as taskiq-redis's ``startup()`` closes a
  shared cluster client): redis-py retries the send;
* the send never reaches the server, every attempt: the caller is told
  that nothing was sent.

The queue is then read with a separate (synchronous) client.
"""

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from taskiq import AsyncBroker
from taskiq_redis import (
    ListQueueBroker,
    ListQueueClusterBroker,
    ListQueueSentinelBroker,
    RedisStreamBroker,
    RedisStreamClusterBroker,
    RedisStreamSentinelBroker,
)

from taskiq_batching import BatchingMiddleware, batch_task
from taskiq_batching.errors import SendManyError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SENT = 250


def _sync_client(env: dict[str, str], variant: str) -> Any:
    if variant == "standalone":
        return redis.Redis.from_url(env["TEST_REDIS_URL"])
    if variant == "cluster":
        return redis.RedisCluster.from_url(env["TEST_REDIS_CLUSTER_URL"])
    host, port = env["TEST_REDIS_SENTINELS"].split(":")
    sentinel = redis.Sentinel([(host, int(port))])
    return sentinel.master_for(env["TEST_REDIS_SENTINEL_MASTER_NAME"])


def _broker(
    env: dict[str, str], variant: str, kind: str, queue: str, **connection: Any
) -> AsyncBroker:
    stream = kind == "stream"
    if variant == "standalone":
        cls: Any = RedisStreamBroker if stream else ListQueueBroker
        return cls(env["TEST_REDIS_URL"], queue_name=queue, **connection)  # type: ignore[no-any-return]
    if variant == "cluster":
        cls = RedisStreamClusterBroker if stream else ListQueueClusterBroker
        return cls(env["TEST_REDIS_CLUSTER_URL"], queue_name=queue)  # type: ignore[no-any-return]
    host, port = env["TEST_REDIS_SENTINELS"].split(":")
    cls = RedisStreamSentinelBroker if stream else ListQueueSentinelBroker
    master = env["TEST_REDIS_SENTINEL_MASTER_NAME"]
    return cls([(host, int(port))], master, queue_name=queue)  # type: ignore[no-any-return]


def _task_ids(client: Any, kind: str, queue: str) -> Counter[str]:
    """How many times each task_id is in the queue."""
    if kind == "stream":
        payloads = [fields[b"data"] for _, fields in client.xrange(queue)]
    else:
        payloads = client.lrange(queue, 0, -1)
    return Counter(json.loads(payload)["task_id"] for payload in payloads)


def _length(client: Any, kind: str, queue: str) -> int:
    return int(client.xlen(queue) if kind == "stream" else client.llen(queue))


@dataclass
class Fault:
    """A fault at a fixed point of the next send, on any redis-py connection."""

    #: "lose-reply": the first reply read after a command holding ``after``
    #: was written is lost, once ``ready()`` holds;
    #: "unreachable": every write fails before anything is written.
    mode: str = ""
    ready: Callable[[], bool] = lambda: True
    fired: int = 0
    after: bytes = b""
    #: Every command written, as bytes.
    written: list[bytes] = field(default_factory=lambda: [b""])


@pytest.fixture
def fault(monkeypatch: pytest.MonkeyPatch) -> Fault:
    armed = Fault()
    read = AbstractConnection.read_response
    write = AbstractConnection.send_packed_command

    async def read_response(self: AbstractConnection, *args: Any, **kw: Any) -> Any:
        if armed.mode == "lose-reply" and armed.after in armed.written[-1]:
            armed.mode = ""
            deadline = time.monotonic() + 20
            # Every command of the send has run on the server: its reply
            # is what gets lost, with the connection.
            while not armed.ready():
                assert time.monotonic() < deadline, "the send never reached Redis"
                await asyncio.sleep(0.01)
            armed.fired += 1
            await self.disconnect()
            raise RedisConnectionError("connection closed under the client")
        return await read(self, *args, **kw)

    async def send_packed_command(
        self: AbstractConnection, command: Any, *args: Any, **kw: Any
    ) -> None:
        armed.written.append(_joined(command))
        if armed.mode == "unreachable" and _SENDING in armed.written[-1]:
            armed.fired += 1
            await self.disconnect()
            raise RedisConnectionError("server unreachable")
        await write(self, command, *args, **kw)

    monkeypatch.setattr(AbstractConnection, "read_response", read_response)
    monkeypatch.setattr(AbstractConnection, "send_packed_command", send_packed_command)
    return armed


def _joined(command: Any) -> bytes:
    if isinstance(command, (bytes, bytearray, memoryview)):
        return bytes(command)
    if isinstance(command, str):
        return command.encode()
    return b"".join(bytes(part) for part in command)


#: In the sending script only (not in the one asking what became of a chunk).
_SENDING = b"'sent', 'EX'"

VARIANTS = ["standalone", "sentinel", "cluster"]
KINDS = ["stream", "list"]


@dataclass
class Sending:
    """A batched task on a broker of the variant and kind, its queue, and a
    separate client that reads the queue."""

    task: Any
    client: Any
    kind: str
    queue: str

    def counts(self) -> Counter[str]:
        return _task_ids(self.client, self.kind, self.queue)

    def length(self) -> int:
        return _length(self.client, self.kind, self.queue)


@asynccontextmanager
async def sending(
    env: dict[str, str],
    variant: str,
    kind: str,
    url: str | None = None,
    **connection: Any,
) -> AsyncIterator[Sending]:
    """``url``: the standalone server as another user (ACL) than the default;
    ``connection``: the standalone pool's connection settings."""
    queue = f"tb-kiq-fault-{uuid.uuid4().hex[:8]}"
    env = {**env, "TEST_REDIS_URL": url or env["TEST_REDIS_URL"]}
    broker = _broker(env, variant, kind, queue, **connection).with_middlewares(
        BatchingMiddleware()
    )

    @batch_task(broker, batch_size=10, batch_timeout=1, task_name="total")
    async def total(items: list[int]) -> int:
        return len(items)

    client = _sync_client(env, variant)
    try:
        await total.kiq_many([0])  # connections made before a fault is armed
        yield Sending(total, client, kind, queue)
    finally:
        client.delete(queue)
        client.close()
        await broker.shutdown()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
async def test_a_send_retried_after_its_reply_was_lost_adds_each_message_once(
    servers: dict[str, str], fault: Fault, variant: str, kind: str
) -> None:
    async with sending(servers, variant, kind) as send:
        fault.ready = lambda: send.length() >= 1 + SENT
        fault.mode = "lose-reply"
        sent = await send.task.kiq_many(range(SENT))
        assert fault.fired == 1
        counts = send.counts()
    assert len(counts) == 1 + SENT
    assert sum(counts.values()) == 1 + SENT, "a message was added twice"
    assert all(counts[task.task_id] == 1 for task in sent)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
async def test_a_send_that_never_reaches_redis_names_every_message_not_sent(
    servers: dict[str, str], fault: Fault, variant: str, kind: str
) -> None:
    async with sending(servers, variant, kind) as send:
        fault.mode = "unreachable"
        with pytest.raises(SendManyError) as raised:
            await send.task.kiq_many(range(SENT))
        fault.mode = ""
        assert fault.fired >= 1
        counts = send.counts()
        # Sent again, the messages said not sent are added once.
        again = await send.task.kiq_many([raised.value.not_sent[i] for i in range(3)])
        after = send.counts()
    error = raised.value
    assert error.not_sent == list(range(SENT))
    assert error.unknown == []
    assert error.sent == []
    assert len(error.task_ids) == SENT
    assert sum(counts.values()) == 1  # only the warm-up message
    assert not set(error.task_ids) & set(counts)
    assert sum(after.values()) == 1 + len(again)


@pytest.fixture(scope="module")
def no_scripts(servers: dict[str, str]) -> str:
    """The standalone server's URL as a user that may not run scripts."""
    admin = redis.Redis.from_url(servers["TEST_REDIS_URL"])
    admin.acl_setuser(
        "noscript",
        enabled=True,
        passwords=["+secret"],
        categories=["+@all", "-@scripting"],
        keys=["*"],
        channels=["*"],
    )
    admin.close()
    return servers["TEST_REDIS_URL"].replace("://", "://noscript:secret@")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_transaction_whose_reply_was_lost_adds_each_message_once(
    servers: dict[str, str], no_scripts: str, fault: Fault, kind: str
) -> None:
    """Without ``@scripting`` a chunk is a MULTI/EXEC under WATCH of its mark:
    the reply of its EXEC is lost, after the server ran it, on a client told
    to retry (redis-py re-sends what failed on a lost connection, but not a
    transaction under WATCH: it raises ``WatchError``)."""
    retry = Retry(NoBackoff(), 3)
    async with sending(servers, "standalone", kind, no_scripts, retry=retry) as send:
        fault.ready = lambda: send.length() >= 1 + SENT
        written = len(fault.written)
        fault.mode, fault.after = "lose-reply", b"EXEC"
        sent = await send.task.kiq_many(range(SENT))
        assert fault.fired == 1
        counts = send.counts()
    assert not any(b"EVAL" in command for command in fault.written[written:])
    execs = sum(command.count(b"EXEC") for command in fault.written[written:])
    assert execs == 1, f"the transaction was sent {execs} times"
    assert len(counts) == 1 + SENT
    assert sum(counts.values()) == 1 + SENT, "a message was added twice"
    assert all(counts[task.task_id] == 1 for task in sent)


async def test_a_client_refused_scripts_sends_transactions_and_others_still_scripts(
    servers: dict[str, str], no_scripts: str, fault: Fault
) -> None:
    """Refusal is remembered by the client whose user was refused, alone."""
    async with (
        sending(servers, "standalone", "stream", no_scripts) as refused,
        sending(servers, "standalone", "stream") as allowed,
    ):
        before = len(fault.written)
        await refused.task.kiq_many(range(3))
        await allowed.task.kiq_many(range(3))
        written = fault.written[before:]
        assert refused.length() == allowed.length() == 4
    # The warm-up send learnt the refusal: no script is tried again.
    evals = [c for c in written if b"EVAL" in c]
    assert len(evals) == 1, "one script, the allowed client's"
    assert sum(c.count(b"EXEC") for c in written) == 1
