"""docker-compose.yml stays consistent with the code (no Docker engine here)."""

import importlib
import shlex
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_services_and_their_commands_exist() -> None:
    services = load()["services"]
    assert set(services) == {"redis", "worker", "producer"}
    worker = services["worker"]["command"]
    assert worker[:2] == ["taskiq", "worker"]
    module, attribute = worker[2].split(":")
    assert hasattr(importlib.import_module(module), attribute)
    producer = services["producer"]["command"]
    assert producer[:2] == ["python", "-m"]
    importlib.import_module(producer[2])
    for name in ("worker", "producer"):
        assert services[name]["build"] == "."
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://redis:")
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_dockerfile_copies_what_the_services_run() -> None:
    copied = [
        shlex.split(line)[1:-1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
    ]
    sources = {source for sources in copied for source in sources}
    assert {"pyproject.toml", "taskiq_batching", "examples"} <= sources
