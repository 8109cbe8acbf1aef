"""Who a profiled worker's busy time belongs to: the broker's client, ours, taskiq's.

``bench.profile_worker`` saves the pyinstrument session
(``OUT.pyisession``). Each sample is a call stack; it belongs to the
innermost frame on it that is code of a known owner (a library, the
plugin, taskiq, the benchmark's app). What the standard library or a
builtin does (``socket.send``, ``json.loads``, ``Future.set_result``...)
so belongs to the code that called it: time aiormq spends in
``asyncio``'s transport is aiormq's. A sample with no owner on its stack
is the event loop's own (running callbacks, scheduling): the loop's
frames (``Handle._run``, ``_run_once``) end the search, so that the code
that started the loop (taskiq's ``start_listen``) is not charged for it.
Samples while a module is imported (start-up) are left out, and so are
idle ones, whose innermost frame is the selector's wait (``epoll.poll``):
the process waits for the network there, it uses no CPU. The shares are
of the rest, the busy time.
"""

from collections import defaultdict
from pathlib import Path
from typing import Any

#: Owners by the path fragments of their source files, first match wins.
OWNERS: list[tuple[str, tuple[str, ...]]] = [
    ("aiormq/aio-pika/pamqp", ("/aiormq/", "/aio_pika/", "/pamqp/")),
    ("nats-py", ("/nats/",)),
    ("taskiq_batching", ("/taskiq_batching/",)),
    ("taskiq", ("/taskiq/", "/taskiq_dependencies/")),
    ("taskiq-aio-pika/taskiq-nats", ("/taskiq_aio_pika/", "/taskiq_nats/")),
    ("result backend: redis-py, taskiq-redis", ("/redis/", "/taskiq_redis/")),
    ("the benchmark's app (bench)", ("/bench/",)),
    ("pydantic", ("/pydantic/", "/pydantic_core/")),
    ("other libraries", ("site-packages/",)),
]
LOOP = "event loop, no library on the stack (asyncio)"
#: The event loop's frames: what a sample has above them is a callback's.
LOOP_FRAMES = {"Handle._run", "_run", "BaseEventLoop._run_once", "_run_once"}
LOOP_FILES = ("asyncio/events.py", "asyncio/base_events.py")
#: Innermost frames that mean "waiting for the network".
IDLE = {"epoll.poll", "select.poll", "select.select", "kqueue.control"}
#: The broker client libraries, by the broker of a workload.
CLIENTS = {"amqp": "aiormq/aio-pika/pamqp", "nats": "nats-py"}


def _owner(path: str) -> str | None:
    for owner, fragments in OWNERS:
        if any(fragment in path for fragment in fragments):
            return owner
    return None


def _frame_owner(frame: str) -> str | None:
    function, path, *_ = [*frame.split("\x01", 1)[0].split("\x00"), "", ""]
    if function in LOOP_FRAMES and path.endswith(LOOP_FILES):
        return LOOP
    return _owner(path)


def owners(session_path: Path) -> dict[str, Any]:
    """Busy time per owner of a saved pyinstrument session.

    :return: ``busy`` and ``idle`` seconds, ``cpu`` (the process's CPU
        seconds pyinstrument measured) and ``owners`` (seconds each).
    """
    from pyinstrument.session import Session

    session = Session.load(session_path)
    seconds: defaultdict[str, float] = defaultdict(float)
    idle = startup = 0.0
    cache: dict[str, str | None] = {}
    for stack, time in session.frame_records:
        leaf = stack[-1].split("\x00", 1)[0] if stack else ""
        if leaf in IDLE:
            idle += time
            continue
        found = LOOP
        for frame in reversed(stack):
            if frame not in cache:
                cache[frame] = _frame_owner(frame)
            owner = cache[frame]
            if owner == LOOP:
                break  # the loop runs a callback: the callback's code is above
            if owner is not None:
                found = owner
                break
        if any("importlib._bootstrap" in frame for frame in stack):
            startup += time
            continue
        seconds[found] += time
    return {
        "busy": sum(seconds.values()),
        "idle": idle,
        "startup": startup,
        "cpu": session.cpu_time,
        "owners": dict(seconds),
    }


def markdown(kind: str, rate: float, data: dict[str, Any], source: Path) -> str:
    """The owners of a profiled worker's busy time, as a Markdown table."""
    busy = data["busy"] or 1.0
    client = data["owners"].get(CLIENTS[kind], 0.0) / busy
    lines = [
        f"Profile of the batched {kind} worker: {rate:,.0f} msg/s under the "
        f"profiler; busy {data['busy']:.2f} s, idle (waiting for the network) "
        f"{data['idle']:.2f} s, process CPU {data['cpu']:.2f} s. The broker's "
        f"client library ({CLIENTS[kind]}) has **{client:.1%}** of the busy "
        f"time. Call tree: `{source.with_suffix('.txt')}`.",
        "",
        "| share of busy time | owner (innermost library frame on the stack) |",
        "|---|---|",
    ]
    for owner, time in sorted(data["owners"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {time / busy:.1%} | {owner} |")
    lines.append("")
    return "\n".join(lines)
