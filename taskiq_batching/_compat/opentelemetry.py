"""taskiq's ``OpenTelemetryMiddleware``: its tracer and the spans it keeps.

Tested with taskiq 0.13.0 (``taskiq[opentelemetry]``) and
opentelemetry-sdk 1.45. Nothing here imports OpenTelemetry: the
middleware's module is looked up only once something imported it.
"""

import sys
from typing import Any

#: The module of taskiq's ``OpenTelemetryMiddleware``.
OTEL_MIDDLEWARE_MODULE = "taskiq.middlewares.opentelemetry_middleware"


def otel_tracer(middleware: Any) -> Any:
    """The tracer of taskiq's ``OpenTelemetryMiddleware``.

    It is made from the tracer provider the user gave the middleware (or
    the global one); batch spans use the same, so they land where the
    messages' spans do.

    Relies on: the middleware keeping its ``Tracer`` as ``self._tracer``.

    :param middleware: an ``OpenTelemetryMiddleware``.
    :return: its ``opentelemetry.trace.Tracer``.
    """
    return middleware._tracer


def otel_message_span(message: Any) -> Any | None:
    """The span taskiq's middleware opened for a message on the worker, if any.

    Relies on: the middleware's module-level ``retrieve_context(message)``
    (undocumented, not exported), which returns ``(span, activation,
    token)`` for a message ``pre_execute`` saw, None otherwise: the span
    is kept on the message object itself.

    :param message: a ``TaskiqMessage`` after ``pre_execute``.
    :return: its ``opentelemetry.trace.Span``, or None.
    """
    module = sys.modules.get(OTEL_MIDDLEWARE_MODULE)
    if module is None:
        return None
    found = module.retrieve_context(message)
    return None if found is None else found[0]
