"""``decode`` gives what taskiq's own decoding (``formatter.loads``) gives."""

import json
from typing import Any

import msgpack
import pytest
from taskiq import InMemoryBroker, TaskiqMessage
from taskiq.abc.formatter import TaskiqFormatter
from taskiq.message import BrokerMessage
from taskiq.serializers import JSONSerializer, MSGPackSerializer

from taskiq_batching.core.buffer import Envelope
from taskiq_batching.worker import decode as decode_module
from taskiq_batching.worker.decode import decode

pytestmark = pytest.mark.timeout(30)

SERIALIZERS = {"json": JSONSerializer, "msgpack": MSGPackSerializer}


def taskiq_decode(broker: InMemoryBroker, data: bytes) -> Envelope | None:
    try:
        message = broker.formatter.loads(data)
        message.parse_labels()
    except Exception:
        return None
    return Envelope.of(message)


def sent(broker: InMemoryBroker, *args: Any, **labels: Any) -> bytes:
    """A message as ``kiq`` would send it."""
    task = broker.register_task(lambda *_: None, task_name="t")
    message = task.kicker().with_labels(**labels)._prepare_message(*args)
    return broker.formatter.dumps(message).message


@pytest.mark.parametrize("serializer", sorted(SERIALIZERS))
@pytest.mark.parametrize(
    ("args", "labels"),
    [
        ((1,), {}),
        (({"a": [1, 2]}, "tenant"), {"batch_size": 100, "batch_timeout": 0.5}),
        (
            ("x",),
            {
                "flag": True,
                "off": False,
                "ratio": 2.5,
                "name": "n",
                "raw": b"\x00\xff",
                "ack_type": "when_executed",
                "other": None,
            },
        ),
    ],
)
def test_same_envelope_as_taskiq_for_messages_kiq_sends(
    serializer: str,
    args: tuple[Any, ...],
    labels: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = InMemoryBroker().with_serializer(SERIALIZERS[serializer]())
    data = sent(broker, *args, **labels)
    expected = taskiq_decode(broker, data)
    assert expected is not None

    def no_pydantic(message: bytes) -> TaskiqMessage:
        raise AssertionError("a message kiq sends needs no pydantic validation")

    monkeypatch.setattr(broker.formatter, "loads", no_pydantic)
    for _ in range(2):  # the second time, labels come from the cache
        assert decode(broker, data) == expected


def message_dict(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "task_id": "id",
        "task_name": "t",
        "labels": {"n": "3"},
        "labels_types": {"n": 2},
        "args": [1],
        "kwargs": {},
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not ...}


@pytest.mark.parametrize(
    "raw",
    [
        message_dict(),
        message_dict(labels_types=...),  # absent: labels left as they are
        message_dict(labels_types=None),
        message_dict(labels_types={"n": "2"}),  # pydantic converts it
        message_dict(labels_types={"n": True}),  # pydantic converts it
        message_dict(labels_types={"missing": 2}),
        message_dict(labels_types={"n": 99}),  # unknown type: taskiq fails
        message_dict(labels={"n": "x"}),  # not an int: taskiq fails
        message_dict(labels={"n": 3}),  # already parsed
        message_dict(task_id=5),  # not a str: pydantic fails
        message_dict(args=...),  # required
        message_dict(args=(1,)),  # a tuple: pydantic accepts it as a list
        message_dict(kwargs={1: "x"}),
        message_dict(extra="ignored"),
        [1, 2],
        "text",
    ],
)
def test_same_outcome_as_taskiq_for_odd_messages(raw: Any) -> None:
    broker = InMemoryBroker().with_serializer(MSGPackSerializer())
    data = msgpack.packb(raw)
    assert decode(broker, data) == taskiq_decode(broker, data)


@pytest.mark.parametrize(
    "data",
    [
        b'\xef\xbb\xbf{"task_id": "a"}',  # a UTF-8 BOM: json.loads refuses it
        b' {"task_id": "a", "task_name": "t", "labels": {}, "args": [NaN],'
        b' "kwargs": {}} \n',
        b'{"task_id": "a", "task_name": "t", "labels": {}, "args": [],'
        b' "kwargs": {}} {}',  # extra data
        b'{"task_id": "a", "task_name": "t", "labels": {}, "labels": {"x": 1},'
        b' "args": [], "kwargs": {}}',  # a key twice: the last one wins
    ],
)
def test_same_outcome_as_taskiq_for_odd_json(data: bytes) -> None:
    broker = InMemoryBroker()
    assert decode(broker, data) == taskiq_decode(broker, data)


def test_undecodable_bytes_give_none() -> None:
    broker = InMemoryBroker()
    assert decode(broker, b"\xff not json") is None
    assert decode(broker, b"") is None


class UpperFormatter(TaskiqFormatter):
    """A formatter of its own: task names travel upper-cased."""

    def dumps(self, message: TaskiqMessage) -> BrokerMessage:
        raise NotImplementedError

    def loads(self, message: bytes) -> TaskiqMessage:
        raw = json.loads(message)
        raw["task_name"] = raw["task_name"].upper()
        return TaskiqMessage.model_validate(raw)


def test_another_formatter_is_used_as_it_is() -> None:
    broker = InMemoryBroker().with_formatter(UpperFormatter())
    data = json.dumps(message_dict()).encode()
    envelope = decode(broker, data)
    assert envelope is not None
    assert envelope.task_name == "T"
    assert envelope.labels == {"n": 3}


def test_the_label_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_module, "_PARSED_LABELS_MAX", 10)
    monkeypatch.setattr(decode_module, "_parsed_labels", {})
    broker = InMemoryBroker().with_serializer(MSGPackSerializer())
    for value in range(25):
        envelope = decode(broker, msgpack.packb(message_dict(labels={"n": str(value)})))
        assert envelope is not None
        assert envelope.labels == {"n": value}
        assert len(decode_module._parsed_labels) <= 10
