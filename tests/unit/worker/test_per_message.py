"""The usual message's path takes no call it does not need, per message.

A stream entry of a task with no middleware hook, an item of the batch
function's own plain type, acked at the worker's step: it is held without
``Lifecycle._hold``, admitted without ``BatchSignature.prepare``, and the
steps at which no message is acked make no pass over the batch. A message
that differs (an ``ack_type`` label, an item to convert) still takes the
general path, with the same outcome.
"""

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from taskiq import InMemoryBroker
from taskiq.acks import AcknowledgeType

from taskiq_batching.core.analysis import analyse
from taskiq_batching.core.batcher import Batcher
from taskiq_batching.core.buffer import Envelope, Held
from taskiq_batching.core.call import Outcome
from taskiq_batching.core.signature import BatchSignature
from taskiq_batching.settings import BatchSettings, FlushReason
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.worker import acks
from taskiq_batching.worker import finishing as finishing_module
from taskiq_batching.worker.lifecycle import Lifecycle

pytestmark = pytest.mark.timeout(10)


async def collect(items: list[int]) -> None:
    return None


class Transport:
    """What the lifecycle uses of a transport: acks, recorded."""

    acknowledges = True

    def __init__(self) -> None:
        self.acked: list[Any] = []

    async def ack(self, handles: Sequence[Any]) -> None:
        self.acked.extend(handles)

    def forget(self, deliveries: Sequence[Delivery]) -> None:
        return None


class Results:
    """A result writer that stores nothing and never fails."""

    async def write(self, results: Sequence[Any]) -> list[tuple[int, BaseException]]:
        return []


def lifecycle_for() -> tuple[Lifecycle, Transport]:
    broker = InMemoryBroker()
    batcher = Batcher(broker)
    batcher.register(
        BatchSpec(
            task_name="collect",
            settings=BatchSettings(batch_size=100),
            signature=analyse("collect", collect),
            timeout=None,
        )
    )
    transport = Transport()
    life = Lifecycle(
        broker,
        batcher,
        Results(),
        AcknowledgeType.WHEN_SAVED,
        transport,  # type: ignore[arg-type]
    )
    return life, transport


def entry(number: int, item: Any, **labels: Any) -> tuple[Envelope, Delivery]:
    """A stream entry (its handle a plain tuple), decoded."""
    envelope = Envelope(f"id-{number}", "collect", labels, [item], {}, size=3)
    return envelope, Delivery(b"msg", ("stream", f"{number}-0".encode()))


class Calls:
    """Counts the calls of a method, which still runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        self.count = 0
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


async def test_a_plain_stream_entry_is_held_and_admitted_without_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    life, _ = lifecycle_for()
    holds = Calls(monkeypatch, Lifecycle, "_hold")
    prepares = Calls(monkeypatch, BatchSignature, "prepare")
    before = asyncio.get_running_loop().time()
    held = await life.accept([entry(1, 5), entry(2, 6)])
    assert (holds.count, prepares.count) == (0, 0)
    assert [one.item for one in held] == [5, 6]
    for one in held:
        assert one.ack is life._deferred
        assert one.ack_type is AcknowledgeType.WHEN_SAVED
        assert one.delivery is not None
        assert one.delivery.data == b"msg"
        assert before <= one.arrived <= asyncio.get_running_loop().time()
    # The clock read once for the chunk's stream entries (no send time).
    assert held[0].arrived == held[1].arrived
    assert life.batcher.buffered("collect") == 2


async def test_a_message_that_differs_takes_the_general_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    life, transport = lifecycle_for()
    holds = Calls(monkeypatch, Lifecycle, "_hold")
    prepares = Calls(monkeypatch, BatchSignature, "prepare")
    # Its own ack type (a label), an item to convert ("7" to 7).
    labelled = entry(1, 5, ack_type=AcknowledgeType.WHEN_RECEIVED.value)
    held = await life.accept([labelled, entry(2, "7")])
    assert (holds.count, prepares.count) == (1, 1)
    assert [one.item for one in held] == [5, 7]
    assert held[0].ack_type is AcknowledgeType.WHEN_RECEIVED
    assert transport.acked == [("stream", b"1-0")]  # acked when received


async def test_no_pass_over_a_batch_at_a_step_that_acks_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps: list[AcknowledgeType] = []
    ack_due = acks.ack_due

    async def recorded(transport: Any, held: Any, when: AcknowledgeType) -> None:
        steps.append(when)
        await ack_due(transport, held, when)

    monkeypatch.setattr(finishing_module, "ack_due", recorded)
    life, transport = lifecycle_for()
    spec = life.batcher.specs["collect"]

    async def finish(held: list[Held]) -> None:
        await life.finish(spec, held, [Outcome()] * len(held), 0.0)

    # Every message acked when saved: the ``when_executed`` step is skipped.
    await finish(await life.accept([entry(1, 5), entry(2, 6)]))
    assert steps == [AcknowledgeType.WHEN_SAVED]
    assert transport.acked == [("stream", b"1-0"), ("stream", b"2-0")]
    # Once a message chose its own ack type, every step looks.
    steps.clear()
    labelled = entry(3, 7, ack_type=AcknowledgeType.WHEN_EXECUTED.value)
    await finish(await life.accept([labelled, entry(4, 8)]))
    assert steps == [AcknowledgeType.WHEN_EXECUTED, AcknowledgeType.WHEN_SAVED]
    assert transport.acked[2:] == [("stream", b"3-0"), ("stream", b"4-0")]


async def test_a_buffer_has_extra_arguments_of_its_own() -> None:
    # The usual message's admission shares one empty list and dict: its
    # buffer keeps copies, so nothing done to one buffer's reaches another.
    life, _ = lifecycle_for()
    await life.accept([entry(1, 5)])
    (buffer,) = life.batcher.buffers.values()
    buffer.args.append("changed")
    buffer.kwargs["changed"] = True
    life.batcher.flush_all(FlushReason.SIZE)
    await life.accept([entry(2, 6)])
    (again,) = life.batcher.buffers.values()
    assert (again.args, again.kwargs) == ([], {})
