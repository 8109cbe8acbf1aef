"""tests/integration/worker_app.py with a retry middleware, for broker faults.

When a worker's Redis connections die, the batch function's own write (it
records its items in Redis) can fail too, and then the whole batch fails:
every message of it gets the error, as documented. A real app retries
such failures; here every task retries (``default_retry_label``), and its
messages are re-sent and batched again.
"""

from taskiq import SimpleRetryMiddleware

from tests.integration.worker_app import broker

#: Retries per message: a fault test may fail the same message several times.
RETRIES = 50

broker.add_middlewares(
    SimpleRetryMiddleware(default_retry_count=RETRIES, default_retry_label=True),
)

__all__ = ["broker"]
