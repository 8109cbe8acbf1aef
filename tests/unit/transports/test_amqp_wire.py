"""A forwarded message's frames, encoded by hand, read back by pamqp."""

import pamqp.frame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from taskiq_batching.transports.amqp_wire import publish_frames


def _frames(data: bytes) -> list[tuple[int, object]]:
    found: list[tuple[int, object]] = []
    while data:
        used, channel, frame = pamqp.frame.unmarshal(data)
        found.append((channel, frame))
        data = data[used:]
    return found


def test_a_publish_reads_back_as_aiormq_would_have_written_it() -> None:
    headers = {"task_name": "app:collect", "batch_sent_at": "1765000000.25"}
    data = publish_frames(7, "jobs.batch.app:collect", headers, b"x" * 25, 10)
    (c1, method), (c2, header), *bodies = _frames(data)
    assert {c1, c2} | {channel for channel, _ in bodies} == {7}
    assert isinstance(method, Basic.Publish)
    assert method.exchange == ""
    assert method.routing_key == "jobs.batch.app:collect"
    assert not method.mandatory
    assert not method.immediate
    assert isinstance(header, ContentHeader)
    assert header.body_size == 25
    assert header.properties.headers == headers
    assert header.properties.delivery_mode == 2  # persistent
    # Split at the connection's frame size, as aiormq splits a body.
    assert [len(body.value) for _, body in bodies] == [10, 10, 5]  # type: ignore[attr-defined]
    assert all(isinstance(body, ContentBody) for _, body in bodies)


def test_an_empty_body_has_no_body_frame() -> None:
    data = publish_frames(1, "q", {"a": ""}, b"", 100)
    assert len(_frames(data)) == 2
