"""At-least-once of the NATS JetStream transport between real worker processes.

Workers are ``taskiq worker`` processes running
tests/integration/nats_alo_app.py on the real NATS server (``NATS_URL``)
(``TB_WAIT_IN_BROKER``: batched tasks wait in the broker, issue 18),
or on a private ``nats-server`` the test starts and restarts; results and
a record of every batch go to the real Redis.
"""

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import ConsumerInfo, DiscardPolicy, RetentionPolicy
from nats.js.errors import NotFoundError
from redis.asyncio import Redis
from taskiq import AsyncBroker
from taskiq.kicker import AsyncKicker

from taskiq_batching import batch_task
from taskiq_batching.transports.nats_send import task_token
from tests.integration.nats_alo_app import make_broker
from tests.integration.nats_durables import states
from tests.integration.workers import Fleet, Worker, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

APP = "tests.integration.nats_alo_app:broker"
NATS_SERVER = "nats-server"


@pytest.fixture
def queue_prefix() -> str:
    return "tb-nalo"


@pytest.fixture
async def stream(nats_url: str, queue: str) -> AsyncIterator[str]:
    """The test's stream (named as its queue), deleted afterwards."""
    yield queue
    with contextlib.suppress(OSError, nats.errors.NoServersError):
        client = await nats.connect(nats_url, max_reconnect_attempts=0)
        try:
            with contextlib.suppress(NotFoundError):
                await client.jetstream().delete_stream(queue)
        finally:
            await client.close()


StartWorker = Callable[..., Worker]


@pytest.fixture
def start_worker(
    nats_url: str, redis_url: str, stream: str, tmp_path: Path
) -> Iterator[StartWorker]:
    fleet = Fleet(
        APP,
        {"NATS_URL": nats_url, "REDIS_URL": redis_url, "TB_QUEUE": stream},
        tmp_path,
    )

    def start(
        args: Sequence[str] = (), url: str = nats_url, **settings: object
    ) -> Worker:
        return fleet.start(args, {"NATS_URL": url}, **settings)

    yield start
    fleet.kill_all()


async def consumer(nats_url: str, stream: str) -> ConsumerInfo:
    client = await nats.connect(nats_url)
    try:
        info: ConsumerInfo = await client.jetstream().consumer_info(stream, stream)
        return info
    finally:
        await client.close()


async def runs(redis: Redis, stream: str, what: str = "batches") -> Counter[int]:
    """How many times each item ran (``batches``) or started (``started``)."""
    raw = await redis.lrange(f"{stream}:{what}", 0, -1)
    return Counter(item for batch in raw for item in json.loads(batch)["items"])


async def test_size_only_batching_with_two_processes_does_not_wedge(
    nats_url: str,
    redis_url: str,
    redis: Redis,
    stream: str,
    start_worker: StartWorker,
) -> None:
    """Two processes share max_ack_pending=100; batches of 60 never fill alone.

    Each process holding, say, 50 messages in a buffer of 150 holds less
    than the consumer's limit, yet the consumer as a whole is at it: the
    server delivers nothing more until something is acked.
    """
    producer = make_broker(nats_url, redis_url, stream, 30, max_ack_pending=100)
    await producer.startup()
    try:
        collect: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
        # Per-worker buffering's problem, so its path whatever the suite's
        # environment says: on the wait path a stop hands back what waits in
        # the broker instead of flushing it (its counterpart there:
        # test_size_only_batches_stay_whole_across_processes_waiting_in_the_broker).
        worker = start_worker(
            ("--workers", "2"), batch_size=150, max_ack_pending=200, wait_in_broker=""
        )

        async def both_wait() -> bool:
            return (await consumer(nats_url, stream)).num_waiting == 2

        # Both processes ask at once: the server shares out what comes.
        await eventually(both_wait, 20, "both processes send pull requests")
        count = 600  # four buffers of 150; the consumer's 200 fill at once
        await asyncio.gather(*(collect.kiq(item) for item in range(count)))

        async def all_delivered() -> bool:
            return (await consumer(nats_url, stream)).num_pending == 0

        # Wedged, the server keeps the rest: at its limit, it delivers no more.
        await eventually(all_delivered, 30, "every message delivered")
        # What waits in a buffer of 150 now is a size-only batch's tail.
        info = await consumer(nats_url, stream)
        assert (info.num_ack_pending or 0) < 2 * 150
        worker.stop(timeout=15)
        assert worker.process.returncode == 0, worker.output()
        assert await runs(redis, stream) == Counter(range(count))
    finally:
        await producer.shutdown()


async def pulled_again(
    nats_url: str, stream: str, count: int, within: float, wait: bool = False
) -> Counter[int]:
    """``count`` messages a pull of this test gets within ``within`` s.

    From the main durable, or (``wait``) ``collect``'s on the batch stream.
    Each fetch returns as its messages arrive; they are acked.

    :return: how many came for each delivery count (2: delivered again).
    """
    subject, durable, name = f"{stream}.tasks", stream, stream
    if wait:
        token = task_token("collect")
        subject, durable = f"{subject}.batch.{token}", f"{stream}-b-{token}"
        name = f"{stream}-batch"
    client = await nats.connect(nats_url)
    try:
        pulled = await client.jetstream().pull_subscribe(
            subject, durable=durable, stream=name
        )
        got: Counter[int] = Counter()
        deadline = asyncio.get_running_loop().time() + within
        while got.total() < count:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            with contextlib.suppress(nats.errors.TimeoutError):
                fetched = await pulled.fetch(count - got.total(), timeout=left)
                for message in fetched:
                    got[message.metadata.num_delivered] += 1
                    await message.ack()
        return got
    finally:
        await client.close()


@pytest.mark.parametrize("wait", [False, True], ids=["today", "wait"])
async def test_messages_cut_off_at_the_stop_deadline_are_handed_back_at_once(
    nats_url: str,
    redis_url: str,
    redis: Redis,
    stream: str,
    batch_stream: str,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
    wait: bool,
) -> None:
    """A batch that outlives ``--wait-tasks-timeout``: its messages are nak'ed.

    ``ack_wait`` is 300 s: a message left ack-pending comes back after
    300 s; a nak'ed one at once. As soon as the worker has exited, a pull of
    the test's own gets all 20 within 10 s: from the main durable, each
    delivered a second time (``today``: the worker held them all), or from
    the batch durable they were moved to (``wait``: the running batch's 10
    delivered a second time, the other 10 a first).
    """
    producer = make_producer(monkeypatch, "plain", nats_url, redis_url, stream, 300)
    await producer.startup()
    try:
        collect: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
        stuck = start_worker(
            ("--wait-tasks-timeout", "1"),
            batch_size=10,
            batch_timeout=0.1,
            batch_delay=3600,
            ack_wait=300,
            wait_in_broker="1" if wait else "",
        )
        for item in range(20):
            await collect.kiq(item)
        # today: 20 read from the main durable. wait: moved (the main
        # durable holds none); the batch durable delivered the running
        # batch's 10, the other 10 wait there (a busy worker does not ask),
        # or were read ahead, if the running batch's last message said a
        # full round more was there (a backlog's: ``_read_ahead``).
        held = [[(0, 0), (10, 10)], [(0, 0), (20, 0)]] if wait else [[(20, 0)]]

        async def one_runs_and_all_held() -> bool:
            started = await redis.llen(f"{stream}:started")
            return started == 1 and await states(nats_url, stream) in held

        await eventually(one_runs_and_all_held, 20, "a batch runs, 10 more wait")
        stuck.stop(timeout=15)
        assert "cut off" in stuck.output()
        got = await pulled_again(nats_url, stream, 20, within=10, wait=wait)
        # Every message held is handed back at once (delivered again).
        back = [Counter({2: 10, 1: 10})] if wait else []
        assert got in [*back, Counter({2: 20})], got
        assert await runs(redis, stream) == Counter()  # none finished
    finally:
        await producer.shutdown()


@pytest.fixture
async def batch_stream(nats_url: str, stream: str) -> AsyncIterator[str]:
    """The stream the batched messages wait on, deleted afterwards."""
    yield f"{stream}-batch"
    client = await nats.connect(nats_url)
    try:
        with contextlib.suppress(NotFoundError):
            await client.jetstream().delete_stream(f"{stream}-batch")
    finally:
        await client.close()


async def batch_waiting(nats_url: str, batch_stream: str) -> int:
    """Pull requests waiting on the batched task's durable (0 before it exists)."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        try:
            names = [info.name for info in await js.consumers_info(batch_stream)]
        except NotFoundError:
            return 0
        waiting = 0
        for name in names:
            waiting += (await js.consumer_info(batch_stream, name)).num_waiting or 0
        return waiting
    finally:
        await client.close()


async def send_steadily(kiq: "Kiq", count: int, rate: float) -> None:
    """``count`` items at about ``rate`` per second (ten at a time)."""
    for start in range(0, count, 10):
        await asyncio.gather(*(kiq(item) for item in range(start, start + 10)))
        await asyncio.sleep(10 / rate)  # pacing, not a barrier


async def batch_sizes(redis: Redis, stream: str) -> list[int]:
    raw = await redis.lrange(f"{stream}:batches", 0, -1)
    return [len(json.loads(batch)["items"]) for batch in raw]


Kiq = Callable[[int], Awaitable[Any]]


def kiq_of(producer: AsyncBroker, kind: str) -> Kiq:
    """How the test sends one item: a plain kicker, or the plugin's.

    ``plain``: taskiq's own ``AsyncKicker`` (a producer without the plugin:
    the message goes to the main subject, a worker moves it); ``plugin``:
    ``collect`` declared on a producer with ``wait_in_broker=True`` (the
    message goes straight to the task's subject).
    """
    if kind == "plain":
        kicker: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
        return kicker.kiq
    task = batch_task(producer, task_name="collect", batch_size=10)(_collect)
    return task.kiq


async def _collect(items: list[int]) -> list[int]:
    return items  # never runs here: the producer only sends


def make_producer(
    monkeypatch: pytest.MonkeyPatch, kind: str, *args: Any, **kwargs: Any
) -> AsyncBroker:
    """``make_broker(*args)``; with ``wait_in_broker=True`` for ``plugin``."""
    with monkeypatch.context() as env:
        if kind == "plugin":
            env.setenv("TB_WAIT_IN_BROKER", "1")
        return make_broker(*args, **kwargs)


async def stream_messages(nats_url: str, name: str) -> tuple[int, int]:
    """A stream's messages stored now, and ever (its last sequence)."""
    client = await nats.connect(nats_url)
    try:
        state = (await client.jetstream().stream_info(name)).state
        return state.messages, state.last_seq
    finally:
        await client.close()


@pytest.mark.parametrize(("kind", "processes"), [("plain", 4), ("plugin", 2)])
async def test_processes_fill_batches_as_one(
    nats_url: str,
    redis_url: str,
    redis: Redis,
    stream: str,
    batch_stream: str,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    processes: int,
) -> None:
    """``wait_in_broker``: 4 (2) processes fill batches of 50 at ~100 items/s.

    250 items (five batches), batch_timeout 1 s: one worker would batch 50
    at a time.
    From a plain kicker (moved by the workers), or from the plugin's
    (published to the task's subject).

    Alone, each process sees a quarter of the rate: batches of ~25 by the
    timeout (measured without the switch: a mean of ~36 at 200/s).
    """
    producer = make_producer(monkeypatch, kind, nats_url, redis_url, stream, 30)
    await producer.startup()
    try:
        collect = kiq_of(producer, kind)
        start_worker(
            ("--workers", str(processes)),
            batch_size=50,
            batch_timeout=1.0,
            wait_in_broker=1,
        )

        async def one_holds_the_slot() -> bool:
            return await batch_waiting(nats_url, batch_stream) == 1

        await eventually(one_holds_the_slot, 30, "a process waits for a batch")
        count = 250
        await send_steadily(collect, count, 100)

        async def all_ran() -> bool:
            return await runs(redis, stream) == Counter(range(count))

        await eventually(all_ran, 30, "every item ran once")
        sizes = await batch_sizes(redis, stream)
        assert sum(sizes) / len(sizes) >= 0.8 * 50, sizes
    finally:
        await producer.shutdown()


async def batch_durable(nats_url: str, batch_stream: str) -> ConsumerInfo:
    """The batched task's durable on the batch stream."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        (info,) = await js.consumers_info(batch_stream)
        return info
    finally:
        await client.close()


@pytest.mark.parametrize("kind", ["plain", "plugin"])
async def test_a_killed_holders_messages_come_back_to_another_process(
    nats_url: str,
    redis_url: str,
    redis: Redis,
    stream: str,
    batch_stream: str,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """``wait_in_broker``: kill -9 the process running a batch; another runs it.

    ``ack_wait`` 3 s: the dead holder's messages are delivered again on the
    batch durable, to the process that holds the slot now.
    """
    producer = make_producer(monkeypatch, kind, nats_url, redis_url, stream, 3)
    await producer.startup()
    try:
        collect = kiq_of(producer, kind)
        settings: dict[str, object] = {
            "batch_size": 10,
            "batch_timeout": 0.5,
            "ack_wait": 3,
            "wait_in_broker": 1,
        }
        holder = start_worker(("--workers", "1"), batch_delay=3600, **settings)

        async def one_holds_the_slot() -> bool:
            return await batch_waiting(nats_url, batch_stream) == 1

        try:
            await eventually(one_holds_the_slot, 30, "the holder waits")
        except pytest.fail.Exception:  # seen once in CI: what did it log?
            pytest.fail(f"the holder never waited for a batch:\n{holder.output()}")
        await asyncio.gather(*(collect(item) for item in range(10)))

        async def it_runs() -> bool:
            return await redis.llen(f"{stream}:started") == 1

        await eventually(it_runs, 20, "the holder's batch runs")
        holder.kill9()
        start_worker(("--workers", "1"), **settings)

        async def all_ran() -> bool:
            return await runs(redis, stream) == Counter(range(10))

        await eventually(all_ran, 30, "the dead holder's items ran elsewhere")

        async def all_acked() -> bool:
            # The batch's record is pushed before its results are saved
            # and its messages acked (``--ack-type when_saved``).
            info = await batch_durable(nats_url, batch_stream)
            return (info.num_redelivered or 0, info.num_ack_pending) == (0, 0)

        await eventually(all_acked, 10, "the batch's messages acked")
        info = await batch_durable(nats_url, batch_stream)
        assert info.delivered is not None
        assert info.delivered.stream_seq == 10  # through the batch durable
    finally:
        await producer.shutdown()


async def test_the_plugins_messages_are_not_moved_and_a_plain_kickers_are(
    nats_url: str,
    redis_url: str,
    redis: Redis,
    stream: str,
    batch_stream: str,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``wait_in_broker``, 2 processes: 200 items from the plugin, 50 plain.

    Each message is stored once on the batch stream (250 in all); the main
    stream holds only the plain kicker's 50: the workers moved those, and
    none of the plugin's (before, all 250 went through the main subject).
    """
    producer = make_producer(monkeypatch, "plugin", nats_url, redis_url, stream, 30)
    await producer.startup()
    try:
        plugin, plain = kiq_of(producer, "plugin"), kiq_of(producer, "plain")
        start_worker(
            ("--workers", "2"), batch_size=50, batch_timeout=0.5, wait_in_broker=1
        )

        async def one_holds_the_slot() -> bool:
            return await batch_waiting(nats_url, batch_stream) == 1

        await eventually(one_holds_the_slot, 30, "a process waits for a batch")
        await asyncio.gather(*(plugin(item) for item in range(200)))
        await asyncio.gather(*(plain(item) for item in range(200, 250)))

        async def all_ran() -> bool:
            return await runs(redis, stream) == Counter(range(250))

        await eventually(all_ran, 30, "every item ran once")
        main_stored, _ = await stream_messages(nats_url, stream)
        _, batch_ever = await stream_messages(nats_url, batch_stream)
        assert (main_stored, batch_ever) == (50, 250)
    finally:
        await producer.shutdown()


async def test_moves_the_batch_stream_refuses_are_batched_by_the_reader_once(
    nats_url: str,
    redis_url: str,
    redis: Redis,
    stream: str,
    batch_stream: str,
    start_worker: StartWorker,
) -> None:
    """The batch stream takes 5 messages (``discard new``); 40 plain items wait.

    The worker moves what it reads: the stream stores the first moves (a
    lease runs them) and refuses the rest, which the worker that read them
    batches itself. Each item runs once. Before, a chunk with one refused
    move was batched whole by the worker while its stored moves also ran
    from the batch stream: those ran twice.
    """
    producer = make_broker(nats_url, redis_url, stream, 30)
    await producer.startup()
    client = await nats.connect(nats_url)
    try:
        await client.jetstream().add_stream(
            name=batch_stream,
            subjects=[f"{stream}.tasks.batch.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            max_msgs=5,
            discard=DiscardPolicy.NEW,
        )
        collect: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
        count = 40
        await asyncio.gather(*(collect.kiq(item) for item in range(count)))
        worker = start_worker(batch_size=10, batch_timeout=0.3, wait_in_broker=1)

        async def all_settled() -> bool:
            main = await consumer(nats_url, stream)
            waiting, _ = await stream_messages(nats_url, batch_stream)
            ran = await runs(redis, stream)
            settled = (main.num_pending, main.num_ack_pending, waiting) == (0, 0, 0)
            return settled and set(ran) == set(range(count))

        # Nothing is left to run anywhere: what ran twice has run by now.
        await eventually(all_settled, 30, "every item ran, nothing left to run")
        assert await runs(redis, stream) == Counter(range(count))
        assert "refused: this worker batches them" in worker.output()
    finally:
        await client.close()
        await producer.shutdown()


async def test_size_only_batches_stay_whole_across_processes_waiting_in_the_broker(
    nats_url: str,
    redis_url: str,
    redis: Redis,
    stream: str,
    batch_stream: str,
    start_worker: StartWorker,
) -> None:
    """``wait_in_broker``: max_ack_pending 100 on the main consumer, batches of 150.

    Two processes, 600 items: the main consumer's messages are moved at
    once (never at its limit) and one process at a time takes a batch, so
    every batch is whole (today's path flushes short ones by pressure).
    """
    producer = make_broker(nats_url, redis_url, stream, 30, max_ack_pending=100)
    await producer.startup()
    try:
        collect: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
        start_worker(
            ("--workers", "2"),
            batch_size=150,
            max_ack_pending=100,
            wait_in_broker=1,
        )

        async def one_holds_the_slot() -> bool:
            return await batch_waiting(nats_url, batch_stream) == 1

        await eventually(one_holds_the_slot, 30, "a process waits for a batch")
        count = 600
        await asyncio.gather(*(collect.kiq(item) for item in range(count)))

        async def all_ran() -> bool:
            return await runs(redis, stream) == Counter(range(count))

        await eventually(all_ran, 45, "every item ran once")
        assert await batch_sizes(redis, stream) == [150] * (count // 150)
    finally:
        await producer.shutdown()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class NatsServer:
    """A private JetStream server (on a port of its own) the test may kill."""

    def __init__(self, store: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store = store
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        """Start the server (its JetStream store kept between starts)."""
        command = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*command, "-sd", str(self.store)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def start(self) -> None:
        """Start the server; wait until it accepts connections."""
        self.launch()

        async def accepts() -> bool:
            try:
                client = await nats.connect(self.url, max_reconnect_attempts=0)
            except Exception:
                return False
            await client.close()
            return True

        await eventually(accepts, 10, "the private nats-server accepts")

    def kill9(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[NatsServer]:
    if shutil.which(NATS_SERVER) is None:
        pytest.skip("no nats-server binary")
    server = NatsServer(tmp_path / "jetstream", tmp_path / "nats-server.log")
    yield server
    server.kill9()


@pytest.mark.parametrize("wait", [False, True], ids=["today", "wait"])
async def test_acks_lost_in_a_server_restart_are_logged_and_nothing_runs_twice(
    redis_url: str,
    redis: Redis,
    stream: str,
    private_nats: NatsServer,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
    wait: bool,
) -> None:
    """The server is killed while a batch runs, and started again.

    Acks sent meanwhile may be lost (so may the last acks it had, not yet
    stored): the server delivers those messages again. The worker says so,
    and acks them again instead of running them twice. ``today``: the
    worker reads ahead into its buffers; ``wait``: it takes a round at a
    time from the batch durable, so the kill waits for a batch running (its
    acks are the ones sent while the server is gone).
    """
    await private_nats.start()
    kind = "plugin" if wait else "plain"  # the plugin's: to the task's subject
    producer = make_producer(monkeypatch, kind, private_nats.url, redis_url, stream, 5)
    await producer.startup()
    collect = kiq_of(producer, kind)
    count = 150  # 15 batches: four run before the kill, the rest after
    for item in range(count):
        await collect(item)
    await producer.shutdown()
    worker = start_worker(
        url=private_nats.url,
        batch_size=10,
        batch_timeout=0.1,
        batch_delay=0.2,
        ack_wait=5,
        wait_in_broker="1" if wait else "",
    )

    async def batches_run_and_one_runs() -> bool:
        started = await redis.llen(f"{stream}:started")
        return started >= 4 and started > await redis.llen(f"{stream}:batches")

    await eventually(batches_run_and_one_runs, 20, "batches run, one running")
    private_nats.kill9()

    async def an_ack_is_unconfirmed() -> bool:
        return "may not have reached the server" in worker.output()

    await eventually(an_ack_is_unconfirmed, 20, "the worker warns of lost acks")
    await private_nats.start()

    async def all_acked() -> bool:
        if set(await runs(redis, stream)) != set(range(count)):
            return False
        return all(state == (0, 0) for state in await states(private_nats.url, stream))

    await eventually(all_acked, 40, "every message ran and was acked")
    worker.stop(timeout=15)
    assert await runs(redis, stream) == Counter(range(count)), worker.output()
