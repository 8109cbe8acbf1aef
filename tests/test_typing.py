"""mypy accepts the typed API as documented and rejects its misuse."""

import textwrap
from pathlib import Path

import pytest
from mypy import api

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]

MISUSE = """
    from taskiq import InMemoryBroker
    from taskiq_batching import BatchingMiddleware, batch_task

    broker = InMemoryBroker().with_middlewares(BatchingMiddleware())

    @batch_task(broker, batch_size=10)
    async def insert_rows(rows: list[int], tenant: str) -> int:
        return len(rows)

    async def misuse() -> None:
        await insert_rows.kiq([1, 2], "t")  # reject: a list, not an item
        await insert_rows.kiq(1)  # reject: missing tenant
        await insert_rows.kiq(1, tenant=5)  # reject: wrong extra type
        await insert_rows.kiq(1, "t")  # fine
        await insert_rows.kiq_many([[1]], "t")  # reject: lists of lists
        await insert_rows.kiq_many([1, 2], "t")  # fine
        await insert_rows.map([1], chunk_size="5")  # reject: chunk_size is an int
        await insert_rows.map([[1]])  # reject: lists of lists
        await insert_rows.map([1], kill_switch="any")  # reject: not a kill switch
"""


def run_mypy(*targets: str) -> tuple[str, int]:
    stdout, stderr, status = api.run(
        [
            "--strict",
            "--no-incremental",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            *targets,
        ],
    )
    return stdout + stderr, status


def test_documented_usage_type_checks() -> None:
    output, status = run_mypy(str(ROOT / "tests" / "typing" / "api_usage.py"))
    assert status == 0, output


def test_sending_a_list_or_wrong_arguments_does_not_type_check(tmp_path: Path) -> None:
    misuse = tmp_path / "misuse.py"
    source = textwrap.dedent(MISUSE).lstrip()
    misuse.write_text(source)
    expected = [
        n for n, line in enumerate(source.splitlines(), 1) if "# reject" in line
    ]
    output, status = run_mypy(str(misuse))
    assert status == 1, output
    flagged = sorted(
        {int(line.split(":")[1]) for line in output.splitlines() if ": error:" in line}
    )
    assert len(expected) == 7
    assert flagged == expected, output
