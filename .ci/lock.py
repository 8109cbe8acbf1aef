"""Refresh the lock files, on purpose: ``./dev lock`` runs this.

For each supported Python (3.10-3.13) it asks pip, in a throwaway venv,
which releases it would install today (``pip install --dry-run --report``),
and writes what it found:

- ``constraints/lock.txt``: the newest releases ``pyproject.toml`` allows
  for ``.[test,docs]`` and pip itself, held back by
  ``constraints/holds.txt``. The main venv (``./dev``), the "locked" rows
  of ``.ci/matrix``, ``.ci/sdist`` and ``.ci/without-redis`` install with it.
- ``constraints/lowest.txt``: every runtime requirement of the package and
  of its extras at its lower bound (the markers evaluated for that Python),
  the rest of ``.[test]`` as pip resolves it then. The "lowest" rows of
  ``.ci/matrix`` install with it.

A package whose version differs between Pythons gets one line per range of
Pythons, with a ``python_version`` marker. The files are pip constraints
(``pip install -c``): they pin what is installed, never add a package.

    python .ci/lock.py [--python 3.12 ...] [--only lock|lowest]

``--python`` re-resolves only these Pythons and keeps the other Pythons'
pins from the current file. Interpreters are found as ``.ci/matrix`` finds
them: ``$PYTHON_X_Y``, ``pythonX.Y`` on ``PATH``, or under pyenv.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints"
HOLDS = CONSTRAINTS / "holds.txt"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
PROJECT = "taskiq-batching"
#: The extras each file resolves; the lowest rows need no docs tools.
EXTRAS = {"lock": "test,docs", "lowest": "test"}
#: Extras that are tools, not runtime parts: not pinned to lower bounds.
TOOL_EXTRAS = {"test", "docs"}
PIP = ("-m", "pip", "--disable-pip-version-check")


def log(message: str) -> None:
    """Say what is being done, on stderr."""
    print(f"lock: {message}", file=sys.stderr, flush=True)


def run(*command: str | Path) -> None:
    """Run a command; its output is shown only when it fails."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"lock: failed: {' '.join(map(str, command))}")


def find_python(version: str) -> str | None:
    """A working interpreter of this ``X.Y`` version, or None."""
    candidates = [os.environ.get(f"PYTHON_{version.replace('.', '_')}", "")]
    candidates.append(shutil.which(f"python{version}") or "")
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(
        (str(path / "bin" / "python") for path in pyenv.glob(f"{version}.*")),
        reverse=True,
    )
    for candidate in filter(None, candidates):
        done = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip() == version:
            return candidate
    return None


def environment(version: str) -> dict[str, str]:
    """The marker environment of a Linux CPython of this version."""
    return {"python_version": version, "python_full_version": f"{version}.0"}


def lower_bounds(version: str) -> list[str]:
    """``name==lower`` for each runtime requirement on this Python."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    lines = list(project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        if extra not in TOOL_EXTRAS:
            lines += requirements
    pins = []
    for line in lines:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == PROJECT:
            continue
        marker = requirement.marker
        if marker is not None and not marker.evaluate(environment(version)):
            continue
        lowers = [s.version for s in requirement.specifier if s.operator == ">="]
        if not lowers:
            raise SystemExit(f"lock: {line!r} has no lower bound (>=)")
        pins.append(f"{requirement.name}=={lowers[0]}")
    return pins


def resolve(python: str, version: str, kind: str, work: Path) -> dict[str, str]:
    """What pip would install on this Python today: name -> version."""
    venv = work / f"venv-{version}"
    run(python, "-m", "venv", "--clear", venv)
    venv_python = str(venv / "bin" / "python")
    # The newest pip resolves, and is pinned like the rest.
    run(venv_python, *PIP, "install", "-q", "-U", "pip")
    constraints = work / f"constraints-{kind}-{version}.txt"
    text = HOLDS.read_text() if HOLDS.exists() else ""
    if kind == "lowest":
        text += "\n".join(lower_bounds(version)) + "\n"
    constraints.write_text(text)
    report = work / f"report-{kind}-{version}.json"
    run(
        venv_python,
        *PIP,
        "install",
        "-q",
        "--dry-run",
        "--ignore-installed",
        "--report",
        report,
        "-c",
        constraints,
        "pip",
        f"{ROOT}[{EXTRAS[kind]}]",
    )
    found = {}
    for item in json.loads(report.read_text())["install"]:
        name = canonicalize_name(item["metadata"]["name"])
        if name != PROJECT:
            found[name] = item["metadata"]["version"]
    return found


def read_lock(path: Path) -> dict[str, dict[str, str]]:
    """The pins of an existing lock file: python -> name -> version."""
    pins: dict[str, dict[str, str]] = {version: {} for version in PYTHONS}
    if not path.exists():
        return pins
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (pin,) = requirement.specifier
        for version in PYTHONS:
            marker = requirement.marker
            if marker is None or marker.evaluate(environment(version)):
                pins[version][canonicalize_name(requirement.name)] = pin.version
    return pins


def marker_for(versions: list[str]) -> str:
    """A ``python_version`` marker for these locked Pythons (sorted)."""
    if versions == list(PYTHONS):
        return ""
    first, last = PYTHONS.index(versions[0]), PYTHONS.index(versions[-1])
    if PYTHONS[first : last + 1] != tuple(versions):
        return " or ".join(f'python_version == "{v}"' for v in versions)
    parts = []
    if first > 0:
        parts.append(f'python_version >= "{PYTHONS[first]}"')
    if last < len(PYTHONS) - 1:
        parts.append(f'python_version < "{PYTHONS[last + 1]}"')
    return " and ".join(parts)


def render(pins: dict[str, dict[str, str]], kind: str) -> str:
    """The lock file's text: one pin a line, markers where Pythons differ."""
    lines = []
    for name in sorted({n for found in pins.values() for n in found}):
        by_version: dict[str, list[str]] = {}
        for python in PYTHONS:
            if name in pins[python]:
                by_version.setdefault(pins[python][name], []).append(python)
        for release, pythons in sorted(by_version.items(), key=lambda i: i[1]):
            marker = marker_for(pythons)
            # Marker checked against the Pythons it was written for.
            assert [
                v
                for v in PYTHONS
                if not marker or Marker(marker).evaluate(environment(v))
            ] == pythons, (name, marker)
            lines.append(f"{name}=={release}" + (f"; {marker}" if marker else ""))
    holds = [
        line.strip()
        for line in (HOLDS.read_text().splitlines() if HOLDS.exists() else [])
        if line.strip() and not line.startswith("#")
    ]
    what = {
        "lock": "The newest releases pyproject.toml allows for .[test,docs] and pip",
        "lowest": "Every runtime requirement at its lower bound, the rest of .[test]",
    }[kind]
    header = [
        f"# Generated by `./dev lock` on {datetime.date.today()}: do not edit by hand.",
        f"# {what},",
        f"# as pip resolved them on Linux for Python {', '.join(PYTHONS)}.",
        f"# Held back (constraints/holds.txt): {', '.join(holds) or 'nothing'}.",
    ]
    return "\n".join(header + lines) + "\n"


def main() -> None:
    """Resolve, then write each lock file and what changed in it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", choices=PYTHONS)
    parser.add_argument("--only", choices=sorted(EXTRAS))
    args = parser.parse_args()
    kinds = [args.only] if args.only else sorted(EXTRAS)
    pythons = args.python or list(PYTHONS)
    interpreters = {}
    for version in pythons:
        python = find_python(version)
        if python is None:
            raise SystemExit(
                f"lock: no Python {version} (set $PYTHON_{version[0]}_{version[2:]})"
            )
        interpreters[version] = python
    CONSTRAINTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            path = CONSTRAINTS / f"{kind}.txt"
            old = read_lock(path)
            pins = {version: dict(found) for version, found in old.items()}
            for version, python in interpreters.items():
                log(f"{kind}: resolving for Python {version} ({python})")
                pins[version] = resolve(python, version, kind, Path(tmp))
            path.write_text(render(pins, kind))
            log(f"wrote {path.relative_to(ROOT)}; what changed:")
            report_changes(old, pins)


def report_changes(
    old: dict[str, dict[str, str]], new: dict[str, dict[str, str]]
) -> None:
    """Print each pin that changed, per Python."""
    changed = False
    for version in PYTHONS:
        names = sorted(set(old[version]) | set(new[version]))
        for name in names:
            before, after = old[version].get(name, "-"), new[version].get(name, "-")
            if before != after:
                changed = True
                print(
                    f"  Python {version}: {name} {before} -> {after}", file=sys.stderr
                )
    if not changed:
        print("  nothing", file=sys.stderr)


if __name__ == "__main__":
    main()
