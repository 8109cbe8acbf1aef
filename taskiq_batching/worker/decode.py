"""Turning a delivered message into an ``Envelope``, as taskiq would decode it.

taskiq's default formatter (``ProxyFormatter``) deserializes a message with
the broker's serializer, then validates the result as a ``TaskiqMessage``
(a pydantic model). For the messages a worker handles in bulk, the model
is not needed: when the deserialized value already has exactly the types
the model declares, the same values are taken as they are. Anything else
(another formatter, a missing field, a value pydantic would have to
convert) goes through taskiq's own ``formatter.loads``, so the outcome is
always what taskiq's Receiver would have decoded.
"""

import json
from typing import Any

from taskiq import AsyncBroker
from taskiq.formatters.proxy_formatter import ProxyFormatter
from taskiq.labels import parse_label
from taskiq.serializers import JSONSerializer

from taskiq_batching.core.buffer import Envelope

#: Parsed label values by (string, label type), shared by messages.
_parsed_labels: dict[tuple[str, int], Any] = {}
#: The cache is emptied when it grows past this many values.
_PARSED_LABELS_MAX = 4096
_MISSING: Any = object()
#: What ``json.loads`` decodes a ``str`` with (no hooks): the same decoder.
_json_decoder = json.JSONDecoder()
#: Its scan: one JSON value from a position (``(value, end)``).
_scan_once: Any = _json_decoder.scan_once  # type: ignore[attr-defined]


def decode(broker: AsyncBroker, data: bytes) -> Envelope | None:
    """Decode one message and parse its labels, as taskiq's Receiver does.

    :param broker: the broker the message came from.
    :param data: the message's bytes.
    :return: its envelope, or None when taskiq could not decode it either.
    """
    formatter = broker.formatter
    if type(formatter) is ProxyFormatter:
        serializer = formatter.broker.serializer
        is_json = type(serializer) is JSONSerializer
        try:
            # taskiq's JSONSerializer.loadb is ``json.loads(data.decode())``:
            # the same decoder, called directly (it runs for every message).
            # A message is one JSON value without whitespace around it: its
            # scan alone decodes it. Anything else (whitespace, extra data,
            # an error) goes through ``json.loads``'s own steps.
            if is_json:
                text = data.decode()
                try:
                    raw, end = _scan_once(text, 0)
                except StopIteration:
                    end = -1
                if end != len(text):
                    raw = _json_decoder.decode(text)
            else:
                raw = serializer.loadb(data)
        except Exception:
            return None
        # JSON objects only have string keys: no need to check them.
        envelope = _envelope(raw, check_keys=not is_json)
        if envelope is not None:
            return envelope
    try:
        message = formatter.loads(data)
        message.parse_labels()
    except Exception:
        return None
    return Envelope.of(message)


def _envelope(raw: Any, check_keys: bool = True) -> Envelope | None:
    """The envelope of a deserialized message that needs no conversion.

    :param raw: the deserialized message.
    :param check_keys: check that its mappings have string keys only.
    :return: the envelope, or None when taskiq's model would convert a value.
    """
    if type(raw) is not dict:
        return None
    task_id, task_name = raw.get("task_id"), raw.get("task_name")
    labels, types = raw.get("labels"), raw.get("labels_types")
    args, kwargs = raw.get("args"), raw.get("kwargs")
    if (
        type(task_id) is not str
        or type(task_name) is not str
        or type(labels) is not dict
        or type(args) is not list
        or type(kwargs) is not dict
    ):
        return None
    if check_keys and not (_str_keys(labels) and _str_keys(kwargs)):
        return None
    if types is not None:
        if type(types) is not dict or (check_keys and not _str_keys(types)):
            return None
        try:
            if types:  # taskiq's kicker sends ``{}`` for a task without labels
                _parse_labels(labels, types)
        except Exception:
            return None
    return Envelope(task_id, task_name, labels, args, kwargs)


def _str_keys(mapping: dict[Any, Any]) -> bool:
    return all(type(key) is str for key in mapping)


def _parse_labels(labels: dict[str, Any], types: dict[str, Any]) -> None:
    """``TaskiqMessage.parse_labels``, remembering what each string parses to.

    Labels travel as strings, and the messages of one task carry the same
    few (``batch_size`` and the like): parsing each once saves a lookup of
    an enum per label per message.
    """
    cache = _parsed_labels
    for name, label_type in types.items():
        value = labels.get(name, _MISSING)
        if value is _MISSING:
            continue
        if type(label_type) is not int:
            raise TypeError(f"label type {label_type!r} is not an int")
        if type(value) is not str:
            labels[name] = parse_label(value, label_type)
            continue
        key = (value, label_type)
        parsed = cache.get(key, _MISSING)
        if parsed is _MISSING:
            if len(cache) >= _PARSED_LABELS_MAX:
                cache.clear()
            parsed = cache[key] = parse_label(value, label_type)
        labels[name] = parsed
