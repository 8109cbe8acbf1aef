"""Messages the broker took back are not run (``Runner.drop_lost``)."""

from taskiq import InMemoryBroker
from taskiq.acks import AckController

from taskiq_batching.core.batcher import Batcher
from taskiq_batching.core.buffer import Buffer, Envelope, Held
from taskiq_batching.core.ports import Serving
from taskiq_batching.transports.delivery import Delivery


def held(number: int, delivery: Delivery | None, acked: bool = False) -> Held:
    async def ack() -> None:
        return None

    controller = AckController(ack)
    controller.is_acked = acked
    envelope = Envelope(str(number), "collect", {}, [number], {})
    return Held(envelope, controller, 0.0, delivery=delivery)


async def test_lost_deliveries_leave_the_batch_and_its_count() -> None:
    batcher = Batcher(InMemoryBroker())
    buffer = Buffer("collect", (), [], {}, 0.0)
    gone, alive = Delivery(b"", "gone"), Delivery(b"", "alive")
    buffer.items = [
        held(0, gone),
        held(1, alive),
        held(2, gone, acked=True),  # acked when received: it stays
        held(3, None),  # no delivery (a sender's): it stays
    ]
    assert batcher.runner.drop_lost(buffer) == 0  # no transport says so
    batcher.held["collect"] = 4
    batcher.serve(Serving(lost=lambda delivery: delivery.handle == "gone"))
    assert batcher.runner.drop_lost(buffer) == 1
    assert [one.task_id for one in buffer.items] == ["1", "2", "3"]
    assert batcher.held["collect"] == 3
