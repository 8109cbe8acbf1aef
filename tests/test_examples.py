"""The examples run as the README says."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_demo(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "examples.demo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def check_demo_output(output: str) -> None:
    batches = [line for line in output.splitlines() if " batch of " in line]
    assert len(batches) == 4, output
    assert "batch of 100 rows (#0..#99), flushed by size" in batches[0]
    assert "batch of 100 rows (#100..#199), flushed by size" in batches[1]
    assert "batch of  50 rows (#200..#249), flushed by timeout" in batches[2]
    assert "batch of   7 rows (#250..#256), flushed by shutdown" in batches[3]
    assert "results: {100: 200, 50: 50}" in output
    assert "results: {7: 7}" in output


@pytest.mark.timeout(90)
def test_demo_in_memory() -> None:
    check_demo_output(run_demo())


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_demo_on_redis(redis_url: str) -> None:
    check_demo_output(run_demo(redis_url))


POLICY_OUTPUTS = {
    "keys": [
        "keys: 2 row(s) of ['a']",
        "shutdown: 2 row(s) of ['b']",
        "shutdown: 1 row(s) of ['c']",
    ],
    "cost": [
        "cost: 2 text(s), 800 tokens",
        "cost: 1 text(s), 400 tokens",
        "cost: 1 text(s), 1500 tokens",
        "shutdown: 1 text(s), 100 tokens",
    ],
    "min_size": ["timeout: [1, 2], waited >= 0.3 s: True"],
    "concurrency": ["most batches at once: 4, per account: 1"],
    "where": [
        "indexing ['a', 'b']",
        "result 2, filtered: False",
        "result None, filtered: True",
        "result 2, filtered: False",
        "result None, filtered: True",
    ],
    "deadlines": ["deadline: ['ann', 'bob'], within 1 s: True"],
    "mapping": ["sent 20, failed [13], not sent 80", "why: 1 item(s) failed"],
    "statistics": [
        "batches 3, items 25, flushes {'size': 2, 'shutdown': 1}",
        "average size 8.3, fill 83%",
    ],
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(POLICY_OUTPUTS))
def test_policy_examples(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"examples.policies.{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == POLICY_OUTPUTS[name], done.stdout + done.stderr
    assert "Task was destroyed" not in done.stderr


RECIPE = ROOT / "examples" / "testing_recipe" / "test_recipe.py"


def test_testing_md_shows_the_recipe_file() -> None:
    """docs/testing.md's first code block is the recipe file, word for word."""
    text = (ROOT / "docs" / "testing.md").read_text()
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert block == RECIPE.read_text()


@pytest.mark.timeout(90)
def test_testing_recipe_passes_in_pytest_asyncio_strict_mode(tmp_path: Path) -> None:
    # An empty config of its own: pytest-asyncio's defaults, as in a new
    # project, not this project's asyncio_mode = "auto".
    config = tmp_path / "pytest.ini"
    config.write_text("[pytest]\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(config),
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=strict",
            "-q",
            str(RECIPE),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout, done.stdout + done.stderr
