import os
import socket
from urllib.parse import urlparse

import pytest


def _service_url(variable: str, default: str) -> str:
    url = os.environ.get(variable, default)
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 0), timeout=2):
            pass
    except OSError as exc:
        reason = f"{variable}={url} is unreachable ({exc})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI needs it")
        pytest.skip(reason)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis for integration tests (``REDIS_URL``)."""
    return _service_url("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The real RabbitMQ for integration tests (``RABBITMQ_URL``)."""
    return _service_url("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture(scope="session")
def nats_url() -> str:
    """The real NATS server, with JetStream, for integration tests (``NATS_URL``)."""
    return _service_url("NATS_URL", "nats://127.0.0.1:4222")
