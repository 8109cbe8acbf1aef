"""The batch span's attributes (``tracing.py``), on InMemoryBroker."""

import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from taskiq.middlewares.opentelemetry_middleware import OpenTelemetryMiddleware

from taskiq_batching import batch_task
from tests.helpers import memory_broker

pytestmark = pytest.mark.timeout(30)


async def test_batch_span_carries_count_reason_wait_calls_and_links() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = memory_broker()
    broker.add_middlewares(OpenTelemetryMiddleware(tracer_provider=provider))
    loop = asyncio.get_running_loop()
    ran = asyncio.Event()

    @batch_task(
        broker, task_name="spanned", batch_size=4, batch_timeout=0.2, batch_isolate=True
    )
    async def spanned(items: list[int]) -> None:
        ran.set()
        if 1 in items:
            raise ValueError("no 1")

    await broker.startup()
    began = loop.time()
    for item in range(3):
        await spanned.kiq(item)
    await asyncio.wait_for(ran.wait(), 10)
    await broker.wait_all()
    elapsed = loop.time() - began
    await broker.shutdown()

    spans = exporter.get_finished_spans()
    messages = [s for s in spans if s.name == "execute/spanned"]
    (batch,) = [s for s in spans if s.name == "execute_batch/spanned"]
    attributes = dict(batch.attributes or {})
    assert attributes["messaging.batch.message_count"] == 3
    assert attributes["taskiq.task_name"] == "spanned"
    assert attributes["taskiq.action"] == "execute_batch"
    assert attributes["taskiq_batching.flush_reason"] == "timeout"
    waited = attributes["taskiq_batching.waited_seconds"]
    assert isinstance(waited, float)
    # Flushed by batch_timeout: it waited that long (the loop's timers may
    # fire up to its clock resolution early), and less than the whole run.
    assert 0.19 <= waited <= elapsed
    assert attributes["taskiq_batching.failed_count"] == 1
    calls = attributes["taskiq_batching.calls"]
    assert isinstance(calls, int)
    assert calls > 1  # isolation re-ran halves
    # A root span (not a child of the sender that opened the buffer), linked.
    assert batch.parent is None
    assert len(messages) == 3
    assert {link.context.span_id for link in batch.links} == {
        span.context.span_id for span in messages
    }
