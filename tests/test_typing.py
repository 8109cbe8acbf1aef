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
    # Incremental, in mypy's cache (MYPY_CACHE_DIR, else .mypy_cache):
    # ``./dev test`` runs mypy just before, so only the two files are
    # checked (~0.5 s, not ~8 s). Errors of a module read from the cache are
    # reported all the same.
    stdout, stderr, status = api.run(
        [
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            *targets,
        ],
    )
    return stdout + stderr, status


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """mypy's errors per file, of one run over both files."""
    misuse = tmp_path_factory.mktemp("typing") / "misuse.py"
    misuse.write_text(textwrap.dedent(MISUSE).lstrip())
    usage = ROOT / "tests" / "typing" / "api_usage.py"
    output, status = run_mypy(str(usage), str(misuse))
    assert status in (0, 1), output  # 2: mypy itself failed
    errors = [line for line in output.splitlines() if ": error:" in line]
    return {
        # mypy names a file as given, or relative to the working directory.
        name: [line for line in errors if Path(line.split(":")[0]).name == path.name]
        for name, path in (("usage", usage), ("misuse", misuse))
    } | {"output": [output]}


def test_documented_usage_type_checks(checked: dict[str, list[str]]) -> None:
    assert checked["usage"] == [], checked["output"][0]


def test_sending_a_list_or_wrong_arguments_does_not_type_check(
    checked: dict[str, list[str]],
) -> None:
    source = textwrap.dedent(MISUSE).lstrip()
    expected = [
        n for n, line in enumerate(source.splitlines(), 1) if "# reject" in line
    ]
    flagged = sorted({int(line.split(":")[1]) for line in checked["misuse"]})
    assert len(expected) == 7
    assert flagged == expected, checked["output"][0]
