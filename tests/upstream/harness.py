"""What the upstream runners share: unpacking, test dependencies, pytest, results.

An upstream suite is unpacked into a temporary directory outside the
repository (its ``tests`` and ``pyproject.toml`` only, so that the
INSTALLED packages are the ones under test) and pytest runs there, with
that directory as working directory and rootdir: ``tests`` then means the
upstream package, not ours. The plugin is loaded as ``-p activate`` with
this folder on ``PYTHONPATH`` (``tests.upstream.activate`` would resolve
``tests`` to the upstream package).
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any, cast

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
#: The plugin's module name when HERE is on PYTHONPATH.
PLUGIN_MODULE = "activate"
#: Must equal ``activate.REPORT_ENV`` (not imported: that would import the
#: package under test into the runner).
REPORT_ENV = "TASKIQ_BATCHING_UPSTREAM_REPORT"
#: Must equal ``activate.RECEIVER_ENV``: ``batching`` makes the suite's
#: Receivers BatchingReceivers.
RECEIVER_ENV = "TASKIQ_BATCHING_UPSTREAM_RECEIVER"
#: Import names whose distribution is named differently.
DISTRIBUTION_OF = {"yaml": "pyyaml", "dateutil": "python-dateutil", "zmq": "pyzmq"}
_PR_SET_PDEATHSIG = 1


def log(message: str) -> None:
    """A line of the runner's own output."""
    print(f"[upstream] {message}", flush=True)


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the runner dies, even killed."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Make SIGTERM run the ``finally`` blocks (stop servers, remove files)."""
    signal.signal(signal.SIGTERM, _terminate)


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every runner takes."""
    parser.add_argument(
        "--without-plugin",
        action="store_true",
        help="run the suite as it is, without loading the activate plugin",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (its path is printed)",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="do not pip-install missing test dependencies; fail instead",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds per test (pytest-timeout), 0 for none; default 60",
    )
    parser.add_argument(
        "--isolate-failures",
        action="store_true",
        help="run each failed test again on its own and print that outcome too",
    )
    parser.add_argument(
        "pytest_args",
        nargs=argparse.REMAINDER,
        help="after --: more pytest arguments (e.g. -- -k listener -x)",
    )


def make_workdir(prefix: str) -> Path:
    """A new temporary directory, never inside the repository."""
    path = Path(tempfile.mkdtemp(prefix=prefix)).resolve()
    if path == REPO_ROOT or REPO_ROOT in path.parents:
        shutil.rmtree(path)
        raise SystemExit(f"temporary directory {path} is inside the repository")
    return path


def remove_workdir(path: Path, keep: bool) -> None:
    """Delete the temporary directory, unless asked to keep it."""
    if keep:
        log(f"kept {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


def suite_files(relative: PurePosixPath) -> bool:
    """The members of an upstream source tree a test run needs."""
    return relative.parts[0] == "tests" or str(relative) == "pyproject.toml"


def unpack(
    archive: tarfile.TarFile,
    dest: Path,
    wanted: Callable[[PurePosixPath], bool],
    strip: int = 0,
) -> int:
    """Write the wanted regular files of a tar archive under ``dest``.

    :param archive: the archive.
    :param dest: the directory to write into.
    :param wanted: which paths (after ``strip``) to write.
    :param strip: leading path components to drop (an sdist's top folder).
    :return: the number of files written.
    """
    written = 0
    for member in archive.getmembers():
        parts = PurePosixPath(member.name).parts[strip:]
        if not member.isfile() or not parts or ".." in parts or parts[0] == "/":
            continue
        relative = PurePosixPath(*parts)
        if not wanted(relative):
            continue
        source = archive.extractfile(member)
        if source is None:
            continue
        target = dest.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read())
        written += 1
    return written


def unpack_bytes(data: bytes, dest: Path, strip: int = 0) -> int:
    """Unpack a tar archive held in memory (``git archive``'s output)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return unpack(archive, dest, suite_files, strip)


# -- test dependencies -------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Absolute module names a Python file imports (any nesting level)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _local_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def third_party_imports(root: Path, targets: Sequence[str]) -> set[str]:
    """Top-level names of what the targets import, outside the stdlib.

    Follows imports of the suite's own modules (``tests.utils``), and
    reads the conftest and package files on the way to each target.

    :param root: the unpacked suite (its rootdir).
    :param targets: test files or folders, relative to ``root``.
    :return: top-level module names.
    """
    pending: list[Path] = []
    for target in targets:
        path = (root / target).resolve()
        pending.extend(path.rglob("*.py") if path.is_dir() else [path])
        folder = path if path.is_dir() else path.parent
        while folder == root or root in folder.parents:
            pending.extend(folder / n for n in ("conftest.py", "__init__.py"))
            folder = folder.parent
    local = {p.name.removesuffix(".py") for p in root.iterdir()}
    seen: set[Path] = set()
    found: set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for name in _imports(path):
            top = name.partition(".")[0]
            if top in local:
                if (module := _local_file(root, name)) is not None:
                    pending.append(module)
            elif top not in sys.stdlib_module_names:
                found.add(top)
    return found


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        toml = importlib.import_module("tomllib")
    except ModuleNotFoundError:  # Python 3.10
        toml = importlib.import_module("pip._vendor.tomli")
    return cast("dict[str, Any]", toml.loads(path.read_text(encoding="utf-8")))


def declared_requirements(pyproject: Path) -> list[Requirement]:
    """Every requirement in dependency groups and optional dependencies."""
    data = _load_toml(pyproject)
    texts: list[str] = []
    for group in data.get("dependency-groups", {}).values():
        texts.extend(item for item in group if isinstance(item, str))
    for extra in data.get("project", {}).get("optional-dependencies", {}).values():
        texts.extend(extra)
    requirements = []
    for text in texts:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.marker is None or requirement.marker.evaluate():
            requirements.append(requirement)
    return requirements


def _installed_version(distribution: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(distribution))
    except (importlib.metadata.PackageNotFoundError, InvalidVersion):
        return None


def missing_requirements(root: Path, targets: Sequence[str]) -> list[str]:
    """Requirements to install so that the targets can run.

    A module the targets import that is not importable here is looked up,
    by distribution name, among the suite's declared requirements; so is
    pytest, whose declared version must be satisfied.

    :raises SystemExit: when a missing module is declared nowhere.
    :return: requirement strings for pip.
    """
    declared = {
        canonicalize_name(r.name): r
        for r in declared_requirements(root / "pyproject.toml")
    }
    needed: list[str] = []
    unknown: list[str] = []
    for module in sorted(third_party_imports(root, targets)):
        if importlib.util.find_spec(module) is not None:
            continue
        name = canonicalize_name(DISTRIBUTION_OF.get(module, module))
        requirement = declared.get(name)
        if requirement is None:
            unknown.append(module)
        else:
            needed.append(str(requirement))
    pytest_requirement = declared.get(canonicalize_name("pytest"))
    version = _installed_version("pytest")
    if pytest_requirement is not None and (
        version is None
        or not pytest_requirement.specifier.contains(version, prereleases=True)
    ):
        needed.append(str(pytest_requirement))
    if unknown:
        raise SystemExit(
            f"the suite imports {', '.join(unknown)}, which is neither installed "
            "nor declared in its pyproject.toml",
        )
    return needed


def ensure_test_dependencies(root: Path, targets: Sequence[str], install: bool) -> None:
    """Install (into this interpreter's environment) what the targets lack."""
    needed = missing_requirements(root, targets)
    if not needed:
        log("test dependencies: all installed")
        return
    if not install:
        raise SystemExit(f"missing test dependencies: {' '.join(needed)}")
    log(f"installing test dependencies: {' '.join(needed)}")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", *needed], check=True
    )


# -- running pytest ----------------------------------------------------------


@dataclass
class Case:
    """One test's outcome, from pytest's JUnit XML."""

    nodeid: str
    outcome: str
    message: str = ""


@dataclass
class Run:
    """A finished pytest run."""

    returncode: int
    cases: list[Case] = field(default_factory=list)
    plugin: dict[str, Any] | None = None

    def count(self, outcome: str) -> int:
        """How many tests had this outcome."""
        return sum(case.outcome == outcome for case in self.cases)


def run_pytest(
    root: Path,
    targets: Sequence[str],
    *,
    with_plugin: bool,
    timeout: float,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    quiet: bool = False,
) -> Run:
    """Run pytest on an unpacked suite, in a subprocess.

    :param root: the unpacked suite: working directory and rootdir.
    :param targets: test paths relative to ``root``.
    :param with_plugin: load the activate plugin.
    :param timeout: seconds per test (0: none); needs pytest-timeout.
    :param extra_args: more pytest arguments.
    :param env: more environment variables.
    :param quiet: hide pytest's output.
    :return: the run, with each test's outcome.
    """
    junit = root / ".upstream-junit.xml"
    report = root / ".upstream-plugin.json"
    for stale in (junit, report):
        stale.unlink(missing_ok=True)
    environment = dict(os.environ)
    environment.update(env or {})
    environment.pop(REPORT_ENV, None)
    command = [
        sys.executable,
        "-m",
        "pytest",
        *targets,
        f"--rootdir={root}",
        f"--junitxml={junit}",
        "-p",
        "no:cacheprovider",
        "-rfE",
    ]
    if with_plugin:
        # Our folder goes first; ``tests`` still resolves to the suite's own
        # package, because python -m puts the working directory before it.
        path = environment.get("PYTHONPATH")
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), path]))
        environment[REPORT_ENV] = str(report)
        command += ["-p", PLUGIN_MODULE]
    if timeout > 0 and importlib.util.find_spec("pytest_timeout") is not None:
        command.append(f"--timeout={timeout:g}")
    elif timeout > 0:
        log("pytest-timeout is not installed: a hanging test will hang the run")
    command += [arg for arg in extra_args if arg != "--"]
    if not quiet:
        log(f"cwd {root}")
        log("$ " + " ".join(command[1:]))
    output = subprocess.DEVNULL if quiet else None
    returncode = subprocess.run(
        command,
        cwd=root,
        env=environment,
        stdout=output,
        stderr=output,
        preexec_fn=die_with_parent,
        check=False,
    ).returncode
    run = Run(returncode, parse_junit(junit, root) if junit.is_file() else [])
    if with_plugin and report.is_file():
        run.plugin = json.loads(report.read_text())
    return run


def isolate_failures(
    root: Path,
    run: Run,
    *,
    with_plugin: bool,
    timeout: float,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> dict[str, str]:
    """Run each failed test again, alone; return its outcome there.

    A test can fail only because of the one before it: pytest-timeout
    interrupting an anyio test leaves anyio's shared runner closed, and
    the next test then fails with "RuntimeError: Runner is closed".
    """
    alone = {}
    for case in run.cases:
        if case.outcome in ("failed", "error"):
            rerun = run_pytest(
                root,
                [case.nodeid],
                with_plugin=with_plugin,
                timeout=timeout,
                extra_args=extra_args,
                env=env,
                quiet=True,
            )
            outcomes = {c.outcome for c in rerun.cases} or {"not run"}
            alone[case.nodeid] = "/".join(sorted(outcomes))
    return alone


def _nodeid(root: Path, classname: str, name: str) -> str:
    parts = classname.split(".") if classname else []
    for cut in range(len(parts), 0, -1):
        module = "/".join(parts[:cut]) + ".py"
        if (root / module).is_file():
            return "::".join([module, *parts[cut:], name])
    return "::".join([*filter(None, [classname]), name])


def parse_junit(path: Path, root: Path) -> list[Case]:
    """Each test's outcome: passed, failed, error or skipped."""
    cases = []
    for element in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("skipped", "error", "failure"):  # the last one found wins
            child = element.find(kind)
            if child is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                text = child.get("message") or child.text or ""
                message = next(
                    (ln.strip() for ln in text.splitlines() if ln.strip()), ""
                )
        nodeid = _nodeid(root, element.get("classname", ""), element.get("name", ""))
        cases.append(Case(nodeid, outcome, message))
    return cases


def plugin_problems(run: Run) -> list[str]:
    """Why the plugin cannot be shown to have been active, if it cannot."""
    if run.plugin is None:
        return ["the activate plugin wrote no report: was it loaded at all?"]
    problems = []
    if not run.plugin.get("installed"):
        problems.append("the activate plugin's patch was not installed")
    if run.plugin.get("tests", 0) and not run.plugin.get("brokers_activated"):
        problems.append("tests ran, but the activate plugin activated no broker")
    if run.plugin.get("unpatched_brokers"):
        problems.append(f"brokers escaped the patch: {run.plugin['unpatched_brokers']}")
    if run.plugin.get("receiver") == "batching" and run.plugin.get("tests", 0):
        if not run.plugin.get("receivers_built"):
            problems.append("no BatchingReceiver was built: the swap did not happen")
        if not run.plugin.get("listens_handed_off"):
            problems.append("no listen() was served by a BatchingReceiver's hand-off")
    return problems


def finish(
    run: Run,
    label: str,
    with_plugin: bool,
    alone: dict[str, str] | None = None,
) -> int:
    """Print the counts and failures of a run; return the exit code.

    The exit code is pytest's, except that a run with the plugin that
    cannot show the plugin was active fails even when every test passed.
    """
    print(flush=True)
    log(f"=== {label} ({'WITH' if with_plugin else 'WITHOUT'} taskiq-batching) ===")
    if run.plugin is not None:
        log(
            f"plugin: {run.plugin['brokers_activated']} broker(s) activated "
            f"({run.plugin['brokers_preexisting']} pre-existing), in "
            f"{run.plugin['tests_with_brokers']} of {run.plugin['tests']} test(s)",
        )
        for name, location in run.plugin.get("packages", {}).items():
            log(f"{name} imported from {location}")
    for case in run.cases:
        if case.outcome in ("failed", "error"):
            log(f"{case.outcome.upper()} {case.nodeid} - {case.message[:200]}")
            if alone is not None:
                log(f"    run alone: {alone.get(case.nodeid, 'not run')}")
    log(
        f"{label}: {run.count('passed')} passed, {run.count('failed')} failed, "
        f"{run.count('error')} errors, {run.count('skipped')} skipped "
        f"(pytest exit code {run.returncode})",
    )
    returncode = run.returncode
    if with_plugin:
        problems = plugin_problems(run)
        for problem in problems:
            log(f"PLUGIN NOT PROVEN ACTIVE: {problem}")
        if problems and returncode == 0:
            returncode = 1
    return returncode


def run_suite(
    root: Path,
    targets: Sequence[str],
    args: argparse.Namespace,
    label: str,
    env: dict[str, str] | None = None,
) -> int:
    """Run an upstream suite as ``common_arguments`` asked; return the exit code.

    pytest over ``targets``, each failure run alone again when asked
    (``--isolate-failures``), then ``finish``'s report.
    """
    with_plugin = not args.without_plugin
    options: dict[str, Any] = {
        "with_plugin": with_plugin,
        "timeout": args.timeout,
        "extra_args": args.pytest_args,
        "env": env,
    }
    run = run_pytest(root, targets, **options)
    alone = isolate_failures(root, run, **options) if args.isolate_failures else None
    return finish(run, label, with_plugin=with_plugin, alone=alone)


def installed_version(distribution: str) -> str:
    """The installed version of a distribution."""
    return importlib.metadata.version(distribution)


def newest_tag_not_after(tags: Iterable[str], version: str) -> str | None:
    """The highest version tag <= ``version`` (``v1.2.3`` or ``1.2.3``)."""
    limit = Version(version)
    best: tuple[Version, str] | None = None
    for tag in tags:
        match = re.fullmatch(r"v?(\d+(?:\.\d+)*)", tag.strip())
        if match is None:
            continue
        tagged = Version(match.group(1))
        if tagged <= limit and (best is None or tagged > best[0]):
            best = (tagged, tag.strip())
    return None if best is None else best[1]
