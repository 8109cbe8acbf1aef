"""The benches' process handling (bench/procs.py): a run stopped by a signal."""

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from bench.procs import interruptible


@pytest.fixture
def sigterm_restored() -> Iterator[None]:
    """Put back pytest's SIGTERM handler, which ``interruptible`` replaces."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.mark.usefixtures("sigterm_restored")
def test_a_finished_run_gives_its_figures() -> None:
    async def run() -> dict[str, Any]:
        return {"rows": [1]}

    assert interruptible(run()) == {"rows": [1]}


@pytest.mark.usefixtures("sigterm_restored")
def test_sigterm_unwinds_the_run_and_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    unwound: list[str] = []

    async def run() -> dict[str, Any]:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.Event().wait()  # never set: only the signal ends it
        finally:
            unwound.append("finally")  # where a fleet is killed
        return {}

    assert interruptible(run()) is None
    assert unwound == ["finally"]
    assert "interrupted" in capsys.readouterr().err
