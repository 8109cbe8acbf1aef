"""Each message held of a take keeps its own batch (``worker/taken.py``)."""

from taskiq_batching.core.buffer import Envelope, Held
from taskiq_batching.settings import FlushReason
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.worker.taken import places_of


def test_messages_dropped_before_their_buffer_shift_no_batch_onto_another() -> None:
    deliveries = [Delivery(b"%d" % index) for index in range(4)]
    taken = [
        (Envelope(str(index), "batched", {}, [index], {}), delivery)
        for index, delivery in enumerate(deliveries)
    ]
    places = [
        (FlushReason.SIZE, "a"),
        (FlushReason.SIZE, "a"),
        (FlushReason.TIMEOUT, "b"),
        (FlushReason.TIMEOUT, "c"),
    ]
    # The first and third were refused (a middleware, an ack_type label).
    held = [
        Held(taken[index][0], None, 0.0, delivery=deliveries[index]) for index in (1, 3)
    ]
    assert list(places_of(held, taken, places)) == [
        (FlushReason.SIZE, "a"),
        (FlushReason.TIMEOUT, "c"),
    ]


def test_with_none_dropped_each_keeps_its_place() -> None:
    deliveries = [Delivery(b"%d" % index) for index in range(2)]
    taken = [
        (Envelope(str(index), "batched", {}, [index], {}), delivery)
        for index, delivery in enumerate(deliveries)
    ]
    places = [(FlushReason.SIZE, "a"), (FlushReason.DEADLINE, "b")]
    held = [Held(envelope, None, 0.0, delivery=d) for envelope, d in taken]
    assert list(places_of(held, taken, places)) == places
