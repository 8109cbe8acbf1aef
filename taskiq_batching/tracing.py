"""A span per batch, for brokers that taskiq's ``OpenTelemetryMiddleware`` traces.

taskiq's middleware gives each message a span (``execute/{task_name}``),
from ``pre_execute`` to ``post_execute``; a batched message's span so
covers its wait in a buffer and its batch. The batch itself gets a span
of its own, ``execute_batch/{task_name}``, made with the middleware's
tracer and current while the batch function runs (spans the function
makes are its children). It links to each message's span, as
OpenTelemetry's messaging conventions do for a batch. Its attributes
(docs/observability.md): ``messaging.batch.message_count``,
``taskiq.task_name``, ``taskiq.action`` (``execute_batch``), the flush
reason, the wait in seconds and, once it ran, the calls of the function
(isolation re-runs included) and the messages that failed.

Nothing here imports OpenTelemetry unless the broker has taskiq's
middleware (which imports it).
"""

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from taskiq import AsyncBroker

from taskiq_batching._compat import (
    OTEL_MIDDLEWARE_MODULE,
    otel_message_span,
    otel_tracer,
)
from taskiq_batching.core.buffer import Buffer
from taskiq_batching.core.call import Outcome
from taskiq_batching.settings import FlushReason


class BatchTracer:
    """Makes the span of each batch with taskiq's ``OpenTelemetryMiddleware``.

    :param middleware: the broker's ``OpenTelemetryMiddleware``.
    """

    def __init__(self, middleware: Any) -> None:
        self.tracer = otel_tracer(middleware)

    @contextlib.contextmanager
    def span(
        self, task_name: str, buffer: Buffer, reason: FlushReason, waited: float
    ) -> Iterator["_BatchSpan"]:
        """The batch's span, current while the body runs.

        :param task_name: the batched task.
        :param buffer: the batch's messages.
        :param reason: why it was flushed.
        :param waited: seconds its first message waited, until the flush.
        :yield: the span.
        """
        # Imported here: only a traced broker needs it.
        from opentelemetry import trace
        from opentelemetry.context import Context

        links = []
        for held in buffer.items:
            found = otel_message_span(held.message)
            if found is not None:
                links.append(trace.Link(found.get_span_context()))
        attributes = {
            "messaging.batch.message_count": len(buffer.items),
            "taskiq.task_name": task_name,
            # taskiq's message spans say "execute" (or "send") here.
            "taskiq.action": "execute_batch",
            "taskiq_batching.flush_reason": reason.value,
            "taskiq_batching.waited_seconds": waited,
        }
        with self.tracer.start_as_current_span(
            f"execute_batch/{task_name}",
            # A root span, its messages linked: whatever context the flush
            # happened in (on InMemoryBroker, the sender of the message that
            # filled the buffer) is no parent of the batch.
            context=Context(),
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield _BatchSpan(span, buffer)


class _BatchSpan:
    """A batch's span, told the batch's outcomes before it ends."""

    def __init__(self, span: Any, buffer: Buffer) -> None:
        self.span = span
        self.buffer = buffer

    def outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Record calls made and messages failed; the batch failed if all did."""
        from opentelemetry.trace import Status, StatusCode

        errors = [outcome.error for outcome in outcomes if outcome.error is not None]
        self.span.set_attribute("taskiq_batching.failed_count", len(errors))
        self.span.set_attribute("taskiq_batching.calls", self.buffer.calls)
        if errors and len(errors) == len(outcomes):
            self.span.record_exception(errors[0])
            self.span.set_status(Status(StatusCode.ERROR, str(errors[0])))


def tracer_for(broker: AsyncBroker) -> BatchTracer | None:
    """The batch tracer of a broker traced by taskiq's middleware, if it is.

    :param broker: the broker.
    :return: the tracer, or None without ``OpenTelemetryMiddleware``.
    """
    module = sys.modules.get(OTEL_MIDDLEWARE_MODULE)
    if module is None:
        return None
    for middleware in broker.middlewares:
        if isinstance(middleware, module.OpenTelemetryMiddleware):
            return BatchTracer(middleware)
    return None
