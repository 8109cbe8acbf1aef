"""The lock files and pyproject.toml's bounds cannot drift apart.

``constraints/lock.txt`` pins what CI installs (the versions last tested),
``constraints/lowest.txt`` the lowest allowed versions; both are written by
``./dev lock`` (``.ci/lock.py``). Here: every supported Python has a pin
for every requirement, each pin satisfies the bounds (and the holds), the
lowest pins sit on the lower bounds, and this venv holds exactly the locked
versions of everything ``.[test,docs]`` installs.
"""

import re
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

import taskiq_batching
import taskiq_batching.metrics

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (pytest brings tomli there)
    import tomli as tomllib

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[1]
PROJECT = canonicalize_name("taskiq-batching")
#: Extras that are tools: not pinned to their lower bounds in lowest.txt.
TOOL_EXTRAS = {"test", "docs"}

with (ROOT / "pyproject.toml").open("rb") as _file:
    PYPROJECT: dict[str, Any] = tomllib.load(_file)["project"]

#: The Pythons the package claims (its classifiers), each locked.
PYTHONS = [
    match.group(1)
    for classifier in PYPROJECT["classifiers"]
    if (
        match := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", classifier)
    )
]


def environment(python: str) -> dict[str, str]:
    return {"python_version": python, "python_full_version": f"{python}.0"}


def read_pins(name: str, python: str) -> dict[NormalizedName, str]:
    """The pins of ``constraints/<name>`` that apply on this Python."""
    pins: dict[NormalizedName, str] = {}
    for line in (ROOT / "constraints" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (pin,) = requirement.specifier
        assert pin.operator == "==", line
        marker = requirement.marker
        if marker is None or marker.evaluate(environment(python)):
            key = canonicalize_name(requirement.name)
            assert key not in pins, f"{name}: two pins of {key} on Python {python}"
            pins[key] = pin.version
    return pins


def requirements(python: str, *, tools: bool = True) -> list[Requirement]:
    """pyproject.toml's requirements (extras too) that apply on this Python."""
    lines = list(PYPROJECT["dependencies"])
    for extra, extra_lines in PYPROJECT["optional-dependencies"].items():
        if tools or extra not in TOOL_EXTRAS:
            lines += extra_lines
    found = []
    for line in lines:
        requirement = Requirement(line)
        marker = requirement.marker
        if canonicalize_name(requirement.name) != PROJECT and (
            marker is None or marker.evaluate(environment(python))
        ):
            found.append(requirement)
    return found


def holds() -> list[Requirement]:
    text = (ROOT / "constraints" / "holds.txt").read_text()
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [Requirement(line) for line in lines if line]


def test_the_pythons_the_package_claims_are_read() -> None:
    assert PYTHONS == ["3.10", "3.11", "3.12", "3.13"]


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("lock", ["lock.txt", "lowest.txt"])
def test_every_requirement_is_pinned_within_its_bounds(lock: str, python: str) -> None:
    pins = read_pins(lock, python)
    assert canonicalize_name("pip") in pins, f"{lock} pins no pip for Python {python}"
    wanted = requirements(python, tools=lock == "lock.txt")
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock}: no pin of {name} on Python {python}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock}: {name}=={pins[name]} on Python {python} is outside "
            f"pyproject.toml's {requirement}"
        )
    for hold in holds():
        name = canonicalize_name(hold.name)
        if name in pins:
            assert hold.specifier.contains(pins[name]), f"{lock}: {name} not held"


@pytest.mark.parametrize("python", PYTHONS)
def test_the_lowest_pins_are_the_lower_bounds(python: str) -> None:
    pins = read_pins("lowest.txt", python)
    for requirement in requirements(python, tools=False):
        lowers = [s.version for s in requirement.specifier if s.operator == ">="]
        assert lowers, f"{requirement}: no lower bound"
        pinned = Version(pins[canonicalize_name(requirement.name)])
        assert pinned == Version(lowers[0]), requirement


def installed_closure() -> dict[NormalizedName, str]:
    """What ``.[test,docs]`` installs on this Python, through installed metadata."""
    found: dict[NormalizedName, str] = {}
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    todo = [(PROJECT, frozenset({"test", "docs"}))]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            pytest.fail(f"{name} is required but not installed")
        if name != PROJECT:
            found[name] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or any(
                marker.evaluate({"extra": extra}) for extra in {"", *extras}
            ):
                todo.append(
                    (canonicalize_name(requirement.name), frozenset(requirement.extras))
                )
    return found


def test_this_venv_holds_the_locked_version_of_everything_installed() -> None:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    pins = read_pins("lock.txt", python)
    installed = installed_closure()
    assert len(installed) > 50
    unpinned = sorted(set(installed) - set(pins))
    assert not unpinned, f"not in constraints/lock.txt for Python {python}: {unpinned}"
    differ = {
        name: (version, pins[name])
        for name, version in installed.items()
        if pins[name] != version
    }
    assert not differ, f"installed vs locked (run ./dev to reinstall): {differ}"


def test_the_reference_page_documents_every_public_name() -> None:
    page = (ROOT / "docs" / "reference.md").read_text()
    documented = set(re.findall(r"^::: (\S+)$", page, flags=re.MULTILINE))
    public = {f"taskiq_batching.{name}" for name in taskiq_batching.__all__} | {
        f"taskiq_batching.metrics.{name}" for name in taskiq_batching.metrics.__all__
    }
    assert documented == public
