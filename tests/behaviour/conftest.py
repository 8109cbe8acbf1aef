import os
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import pytest

from tests.behaviour.paths import PATHS, Path, open_path


def _redis_url() -> str | None:
    return _reachable("REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(variable: str, default: str) -> str | None:
    url = os.environ.get(variable, default)
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 0), 2):
            return url
    except OSError:
        return None


@pytest.fixture(params=PATHS)
async def path(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Path]:
    """The same test on every path a batched message can take."""
    name: str = request.param
    url = None
    if name.startswith("redis"):
        url = _redis_url()
        if url is None:
            reason = "REDIS_URL is unreachable"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"{reason}; CI needs it")
            pytest.skip(reason)
    nats_url = None
    if name == "nats":
        nats_url = _reachable("NATS_URL", "nats://127.0.0.1:4222")
        if nats_url is None:
            reason = "NATS_URL is unreachable"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"{reason}; CI needs it")
            pytest.skip(reason)
    async with open_path(name, url, monkeypatch, nats_url=nats_url) as opened:
        yield opened
