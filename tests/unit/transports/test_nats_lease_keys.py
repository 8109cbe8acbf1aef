"""A NATS lease round kept per key (``nats_lease_keys.KeyedRound``), no server.

A round holds each key's messages apart: a key full is handed over alone,
the others stay open until the round's deadline; the keys it holds open
are bounded (a key comes from a message's arguments and may be crafted).
"""

import time

import pytest

from taskiq_batching.core.broker_keys import NO_KEY
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.nats_lease_keys import (
    KEY_CHARS,
    KEY_HEADER,
    MAX_KEYS,
    KeyedRound,
    key_of,
)

pytestmark = pytest.mark.timeout(10)


def message(sequence: int, sent_at: float | None = None) -> Delivery:
    return Delivery(b"m", sequence, sent_at=time.time() if sent_at is None else sent_at)


def keyed(key: str) -> dict[str, str]:
    return {KEY_HEADER: key}


def test_a_full_key_is_handed_over_alone_and_the_others_stay_open() -> None:
    round_ = KeyedRound(3, 0.5)
    out = []
    for sequence, key in enumerate("ababa"):
        out += round_.add(message(sequence), keyed(key))
    [full] = out
    assert (full.key, full.reason) == ("a", "size")
    assert [d.handle for d in full.deliveries] == [0, 2, 4]
    assert [d.handle for d in round_.held()] == [1, 3]  # b waits for more
    assert round_  # the round goes on: it keeps the slot


def test_at_its_deadline_each_open_key_is_its_own_batch_run_at_once() -> None:
    round_ = KeyedRound(100, 0.5)
    sent = time.time()
    for sequence, key in enumerate("abcab"):
        round_.add(message(sequence, sent + sequence / 100), keyed(key))
    assert round_.due == pytest.approx(sent + 0.5 - 0.005)  # the first send's
    assert not round_.is_due(sent + 0.4)
    assert round_.is_due(sent + 0.5)
    ended = round_.end()
    assert [(b.key, b.reason, [d.handle for d in b.deliveries]) for b in ended] == [
        ("a", "timeout", [0, 3]),
        ("b", "timeout", [1, 4]),
        ("c", "timeout", [2]),
    ]
    assert not round_
    assert round_.due is None


def test_without_keys_a_round_is_one_batch_full_at_batch_size() -> None:
    round_ = KeyedRound(3, None)
    assert round_.owed(0) == 3
    assert round_.add(message(1), {}) == []
    assert round_.owed(0) == 2  # what fills it: the request ends with it
    assert round_.add(message(2), {}) == []
    [full] = round_.add(message(3), {})
    assert (full.key, full.reason, len(full.deliveries)) == (NO_KEY, "size", 3)
    assert not round_  # the round ended: the slot passes on


def test_with_several_keys_a_request_asks_for_what_fills_them_all() -> None:
    round_ = KeyedRound(10, 0.5)
    assert round_.expires(time.time(), 2.0) == 2.0  # the idle request
    round_.add(message(1), keyed("a"))
    round_.add(message(2), keyed("b"))
    # Not 9 (a request ending mid-round lets another process split the keys).
    assert round_.owed(0) == 18
    assert round_.owed(MAX_KEYS * 10 - 5) == 3  # bounded by what it may hold
    round_.end()
    # The next round's first request asks for as many keys as this one
    # held, for no longer than a round lasts.
    assert round_.owed(0) == 20
    assert round_.expires(time.time(), 2.0) == 0.5


def test_a_key_is_full_at_what_the_workers_short_remainder_lacks() -> None:
    round_ = KeyedRound(10, 0.5)
    round_.add(message(1), keyed("a"))
    round_.add(message(2), keyed("b"))
    [full] = round_.want({"a": 1})
    assert (full.key, full.reason, len(full.deliveries)) == ("a", "size", 1)
    assert round_.owed(0) == 9  # one key open, and what b lacks
    [second] = round_.want({"b": 1})
    assert (second.key, len(second.deliveries)) == ("b", 1)
    assert round_.want({"c": 2}) == []
    assert round_.add(message(3), keyed("c")) == []
    [third] = round_.add(message(4), keyed("c"))
    assert (third.key, third.reason, len(third.deliveries)) == ("c", "size", 2)


def test_a_round_holds_at_most_max_keys_open_the_oldest_runs_early() -> None:
    round_ = KeyedRound(100, None)
    for sequence in range(MAX_KEYS):
        assert round_.add(message(sequence), keyed(f"k{sequence}")) == []
    # A crafted key per message never grows the round past the bound.
    for sequence in range(MAX_KEYS, 3 * MAX_KEYS):
        [early] = round_.add(message(sequence), keyed(f"k{sequence}"))
        assert (early.key, early.reason) == (f"k{sequence - MAX_KEYS}", "keys")
        assert len(round_.keys) == MAX_KEYS
    assert round_.owed(0) <= MAX_KEYS * 100 - MAX_KEYS


def test_a_key_header_is_bounded_and_a_missing_one_is_no_key() -> None:
    assert key_of({}) == NO_KEY
    assert key_of({KEY_HEADER: ""}) == NO_KEY
    assert key_of({KEY_HEADER: "x" * 1000}) == "x" * KEY_CHARS


def test_a_batch_deadline_makes_the_whole_round_due_and_marks_its_key() -> None:
    round_ = KeyedRound(100, 60)
    sent = time.time()
    round_.add(message(1, sent), keyed("a"))
    round_.add(message(2, sent), {KEY_HEADER: "b", "batch_deadline": str(sent + 1)})
    assert round_.due == pytest.approx(sent + 1 - 0.005)
    reasons = {b.key: b.reason for b in round_.end()}
    assert reasons == {"a": "timeout", "b": "deadline"}
