"""Buffered messages: envelopes and contexts."""

from taskiq import InMemoryBroker, TaskiqMessage

from taskiq_batching.buffer import Envelope, PendingItem


def message() -> TaskiqMessage:
    return TaskiqMessage(
        task_id="t1",
        task_name="tasks:insert",
        labels={"ack_type": "when_saved", "_retries": 1},
        labels_types=None,
        args=[{"id": 1}, "tenant"],
        kwargs={"weight": 2},
    )


def test_an_envelope_opens_to_the_same_message() -> None:
    original = message()
    opened = Envelope.of(original).open()
    assert opened.model_dump() == original.model_dump()
    assert isinstance(opened, TaskiqMessage)


def test_a_context_is_made_once_and_only_on_demand() -> None:
    acks: list[int] = []
    pending = PendingItem({"id": 1}, Envelope.of(message()), ack=lambda: acks.append(1))
    assert pending.context is None
    broker = InMemoryBroker()
    context = pending.context_for(broker)
    assert context is pending.context_for(broker)
    assert context.message.task_id == "t1"
    assert context.is_ackable
    assert pending.taskiq_message() is context.message
