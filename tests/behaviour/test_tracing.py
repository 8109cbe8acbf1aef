"""taskiq's OpenTelemetryMiddleware on batched messages, on every path.

taskiq's middleware keeps each message's span on the message object from
``pre_execute`` to ``post_execute``: each batched message must get one
whole span of its own, and its batch a span linked to them.
"""

from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode
from taskiq.middlewares.opentelemetry_middleware import OpenTelemetryMiddleware

from taskiq_batching import batch_task, per_item
from tests.behaviour.paths import Path, running

pytestmark = pytest.mark.timeout(30)


async def test_one_span_per_message_and_a_linked_batch_span(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if path.name == "nats":
        pytest.skip(
            "taskiq-nats sends labels as NATS headers, which must be strings: "
            "OpenTelemetryMiddleware's float label fails its kick, batched or not"
        )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    path.broker.add_middlewares(OpenTelemetryMiddleware(tracer_provider=provider))

    @batch_task(path.broker, task_name="traced", batch_size=3)
    async def traced(items: list[int]) -> Any:
        return per_item(ValueError("no 2") if i == 2 else i for i in items)

    async with running(path):
        sent = [await traced.kiq(i) for i in (1, 2, 3)]
        results = [await task.wait_result(timeout=10) for task in sent]
        ids = [task.task_id for task in sent]
        await path.journal.wait(ids, "post_execute", timeout=10)
    assert [r.is_err for r in results] == [False, True, False]
    spans = exporter.get_finished_spans()
    executed = [s for s in spans if s.name == "execute/traced"]
    assert len(executed) == 3
    for span in executed:
        assert span.attributes is not None
        assert span.attributes["taskiq.task_name"] == "traced"
        assert span.attributes["taskiq.action"] == "execute"
    failed = [s for s in executed if s.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1
    assert failed[0].events[0].name == "exception"
    (batch,) = [s for s in spans if s.name == "execute_batch/traced"]
    assert batch.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 3
    assert batch.attributes["taskiq_batching.flush_reason"] == "size"
    assert batch.attributes["taskiq_batching.failed_count"] == 1
    linked = {link.context.span_id for link in batch.links}
    assert linked == {span.context.span_id for span in executed}
    assert "no existing span found" not in caplog.text
