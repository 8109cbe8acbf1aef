"""A property-based fuzzer: generated messages, valid and invalid, to a real worker.

hypothesis generates lists of messages of ``hostile_app``'s tasks: good
items, wrong types, huge ints, NaN and infinities, values nested past any
key's depth, unknown and extra arguments, crafted ``batch_deadline``
labels, non-JSON bodies and bodies taskiq cannot read. Each list is sent
as bytes (``broker.kick``) to one real ``taskiq worker`` per broker (the
Redis stream, RabbitMQ), and then: every valid message has its right
result, every invalid one its named error type (``BatchItemError``, or
``BatchArgumentError`` for arguments the function refuses), a filtered one
its empty result, an undecodable one nothing (taskiq drops it); and the
worker process is still the one that started.

Bounded for CI: ``TB_FUZZ_EXAMPLES`` lists (default 20) of
``TB_FUZZ_SIZE`` messages (default 100), so 2,000 messages per broker;
derandomized, no example database, no deadline, no shrinking (each
failure names its messages; ``TB_FUZZ_SHRINK=1`` turns shrinking on).
A longer run: ``TB_FUZZ_EXAMPLES=200 pytest tests/integration/test_fuzz.py``.
"""

import asyncio
import math
import os
import reprlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.hostile_vectors import AMBIGUOUS, FILTER_BELOW, UNLUCKY, nested
from tests.integration.hostile import KINDS, Target, body, hostile_worker, raw
from tests.integration.workers import eventually

pytestmark = [pytest.mark.integration]

EXAMPLES = int(os.environ.get("TB_FUZZ_EXAMPLES", "20"))
SIZE = int(os.environ.get("TB_FUZZ_SIZE", "100"))
PHASES = [Phase.explicit, Phase.generate]
if os.environ.get("TB_FUZZ_SHRINK") == "1":
    PHASES.append(Phase.shrink)

ITEM_ERROR, ARGUMENT_ERROR = "BatchItemError", "BatchArgumentError"


@dataclass
class Sent:
    """One generated message and what it must get.

    ``outcome``: ``("value", v)``, ``("filtered", None)``, ``("error", type
    name)``, or ``("dropped", None)`` (undecodable: no result).
    """

    task_name: str
    data: Any  # the message's fields, or raw bytes
    outcome: tuple[str, Any]
    deadline: str | None = None  # "ok", "overflow", "text": set when sent


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=4), children, max_size=4),
    ),
    max_leaves=10,
)
#: Nested past the deepest a key takes (64 levels), or not.
DEEP = st.integers(65, 700).map(nested)


@st.composite
def n_values(draw: st.DrawFn) -> tuple[Any, str]:
    """An item's ``n`` and what it makes of the message: ok, error, filtered."""
    kind = draw(st.sampled_from(["int", "huge", "special", "invalid"]))
    if kind == "int":
        n = draw(st.integers(-150, 10**6).filter(lambda v: v not in (13, -3)))
        return n, "filtered" if n < FILTER_BELOW else "ok"
    if kind == "huge":
        return draw(st.sampled_from([10**400, -(10**30), 2**63])), "filtered_or_ok"
    if kind == "special":
        return draw(st.sampled_from([UNLUCKY, AMBIGUOUS])), "error"
    invalid = st.one_of(
        st.text(max_size=5).map(lambda t: "x" + t),
        st.just(1.5),
        st.just(math.nan),
        st.just(math.inf),
        st.lists(st.integers(), max_size=2),
        st.none(),
    )
    return draw(invalid), "error"


@st.composite
def batched(draw: st.DrawFn) -> Sent:
    """A message of the batched task, valid or not, with its outcome."""
    n, verdict = draw(n_values())
    if verdict == "filtered_or_ok":
        verdict = "filtered" if n < FILTER_BELOW else "ok"
    item, late = _item(draw, n)  # late: checked only if batch_where lets it through
    shape, args = _call_shape(draw, item)
    if shape == "wrong_item":
        verdict = "error"
    kwargs, tenant, errors = _kwargs(draw)  # errors: in the order the worker checks
    unknown = draw(st.booleans()) and draw(st.booleans())
    if unknown:
        kwargs["junk"] = draw(st.one_of(JSON, DEEP))
    deadline = draw(st.sampled_from([None, None, "ok", "nan", "overflow", "text"]))
    if deadline in ("overflow", "text"):
        late.append(ITEM_ERROR)
    if shape == "no_item":
        outcome: tuple[str, Any] = ("error", ITEM_ERROR)
    elif shape == "too_many" or unknown:
        outcome = ("error", ARGUMENT_ERROR)
    else:
        outcome = _outcome(verdict, errors, late, [tenant, n])
    fields = {"args": args, "kwargs": kwargs}
    return Sent("hostile", fields, outcome, deadline)


def _item(draw: st.DrawFn, n: Any) -> tuple[dict[str, Any], list[str]]:
    """The item (its ``n``, perhaps a cost and a group), and its late errors."""
    item: dict[str, Any] = {"n": n}
    late: list[str] = []
    if draw(st.booleans()):
        cost = draw(
            st.one_of(
                st.integers(0, 10**6),
                st.floats(0, 1e6),
                st.sampled_from([-1, math.nan, math.inf, 10**400, True, "1", [1]]),
            )
        )
        item["cost"] = cost
        if not _fine_cost(cost):
            late.append(ITEM_ERROR)
    if draw(st.booleans()):
        deep = draw(st.booleans())
        item["group"] = draw(DEEP if deep else JSON)
        if deep:
            late.append(ITEM_ERROR)
    return item, late


def _call_shape(draw: st.DrawFn, item: dict[str, Any]) -> tuple[str, list[Any]]:
    """The call's shape and its positional arguments."""
    args: list[Any] = [item]
    shape = draw(st.sampled_from(["item", "wrong_item", "no_item", "too_many"]))
    if shape == "wrong_item":
        args = [draw(st.one_of(SCALARS, st.lists(SCALARS, max_size=3)))]
    elif shape == "no_item":
        args = []
    elif shape == "too_many":
        args += [draw(SCALARS) for _ in range(3)]
    return shape, args


def _kwargs(draw: st.DrawFn) -> tuple[dict[str, Any], Any, list[str]]:
    """The extra arguments, the tenant the result shows, and their errors."""
    kwargs: dict[str, Any] = {}
    tenant: Any = "a"
    errors: list[str] = []
    if draw(st.booleans()):
        value = draw(st.one_of(st.text(max_size=6), SCALARS))
        kwargs["tenant"] = value
        tenant = value
        if not isinstance(value, str):
            errors.append(ITEM_ERROR)
    if draw(st.booleans()):
        deep = draw(st.booleans())
        kwargs["note"] = draw(DEEP if deep else JSON)
        if deep:
            errors.append(ITEM_ERROR)
    return kwargs, tenant, errors


def _outcome(
    verdict: str, errors: list[str], late: list[str], value: Any
) -> tuple[str, Any]:
    """What a well-shaped call gets (the item, then the rest, then policies)."""
    if verdict == "error":
        return ("error", ITEM_ERROR)
    if errors:
        return ("error", errors[0])
    if verdict == "filtered":
        return ("filtered", None)
    if late:
        return ("error", late[0])
    return ("value", value)


def _fine_cost(cost: Any) -> bool:
    if isinstance(cost, bool) or not isinstance(cost, (int, float)):
        return False
    try:
        return math.isfinite(float(cost)) and cost >= 0
    except OverflowError:
        return False


PLAIN = st.integers(-(10**6), 10**6).map(
    lambda v: Sent("plain", {"args": [v], "kwargs": {}}, ("value", v))
)
UNDECODABLE = st.one_of(
    st.binary(max_size=30).map(lambda b: b"\xff" + b),  # never UTF-8 JSON
    st.sampled_from([b"[]", b"null", b'{"task_id": 1}', b'{"args": "x"}']),
).map(lambda data: Sent("hostile", data, ("dropped", None)))
MESSAGES = st.one_of(batched(), batched(), batched(), PLAIN, UNDECODABLE)


@dataclass
class Running:
    """The worker of every example, and the event loop its clients live in."""

    loop: asyncio.AbstractEventLoop
    target: Target


@pytest.fixture(scope="module", params=KINDS)
def running(
    request: pytest.FixtureRequest,
    redis_url: str,
    rabbitmq_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Running]:
    """One real worker for every example of the module, per broker."""
    kind: str = request.param
    queue = f"tb-fuzz-{uuid.uuid4().hex[:10]}"
    log = tmp_path_factory.mktemp("fuzz") / "worker.log"
    loop = asyncio.new_event_loop()
    context = hostile_worker(kind, redis_url, rabbitmq_url, queue, log)
    target = loop.run_until_complete(context.__aenter__())
    try:
        yield Running(loop, target)
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))
        loop.close()


@pytest.mark.timeout(600)
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=PHASES,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(messages=st.lists(MESSAGES, min_size=SIZE, max_size=SIZE))
def test_generated_messages_fail_alone_and_never_crash_the_worker(
    running: Running, messages: list[Sent]
) -> None:
    running.loop.run_until_complete(exchange(running.target, messages))


async def exchange(target: Target, messages: list[Sent]) -> None:
    """Send the messages, then check every outcome and the worker."""
    sent: dict[str, Sent] = {}
    for message in messages:
        task_id = uuid.uuid4().hex
        data = encode(task_id, message)
        await target.producer.kick(raw(task_id, message.task_name, data))
        sent[task_id] = message
    wrong = []
    for task_id, message in sent.items():
        if message.outcome[0] == "dropped":
            continue
        got = outcome_of(await target.result(task_id))
        if got != message.outcome:
            # reprlib: the data may be nested 700 deep.
            shown = reprlib.repr(message.data)
            wrong.append((message.outcome, got, shown, message.deadline))
    assert not wrong, wrong[:5]
    await eventually(target.settled, 30, "every message acked or dropped")
    await target.assert_never_restarted()


def encode(task_id: str, message: Sent) -> bytes:
    if isinstance(message.data, bytes):
        return message.data
    labels: dict[str, Any] = {}
    if message.deadline == "ok":
        labels["batch_deadline"] = time.time() + 1
    elif message.deadline == "nan":
        labels["batch_deadline"] = math.nan
    elif message.deadline == "overflow":
        labels["batch_deadline"] = 10**400
    elif message.deadline == "text":
        labels["batch_deadline"] = "soon"
    fields = message.data
    return body(task_id, message.task_name, fields["args"], fields["kwargs"], labels)


def outcome_of(result: Any) -> tuple[str, Any]:
    if result.is_err:
        return ("error", type(result.error).__name__)
    if result.labels.get("batch_filtered"):
        return ("filtered", None)
    return ("value", result.return_value)
