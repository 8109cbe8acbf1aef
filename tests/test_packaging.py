"""The sdist and the wheel as a package index would get them.

Both are built from a copy of the checkout (``python -m build
--no-isolation``: the sdist, then the wheel from the sdist), so the
checkout is left as it is. ``.ci/sdist`` does the same in an isolated build
with the oldest setuptools allowed, then installs the sdist and runs its
unit tests.
"""

import email
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import taskiq_batching

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "https://github.com/taskiq-python/taskiq-batching"

#: Libraries whose private parts the package touches (``_compat/``, the
#: transports, the metrics) or which it imports directly: each needs an
#: upper bound.
PRIVATE_PARTS_TOUCHED = {
    "taskiq",
    "taskiq-dependencies",
    "taskiq-redis",
    "redis",
    "pamqp",
    "opentelemetry-api",
    "taskiq-aio-pika",
    "aio-pika",
    "aiormq",
    "taskiq-nats",
    "nats-py",
    "prometheus-client",
}


class Built:
    def __init__(self, sdist: Path, wheel: Path) -> None:
        with tarfile.open(sdist) as archive:
            top = archive.getnames()[0].split("/")[0]
            self.sdist_files = {
                name.removeprefix(f"{top}/")
                for name in archive.getnames()
                if archive.getmember(name).isfile()
            }
            pkg_info = archive.extractfile(f"{top}/PKG-INFO")
            assert pkg_info is not None
            self.pkg_info = email.message_from_bytes(pkg_info.read())
        with zipfile.ZipFile(wheel) as archive:
            self.wheel_files = set(archive.namelist())
            self.dist_info = next(
                name.split("/")[0]
                for name in self.wheel_files
                if name.split("/")[0].endswith(".dist-info")
            )
            self.metadata = email.message_from_bytes(
                archive.read(f"{self.dist_info}/METADATA")
            )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            ".venvs",
            "*.egg-info",
            "build",
            "dist",
            "__pycache__",
            "*.pyc",
            ".mypy_cache",
            ".ruff_cache",
            ".pytest_cache",
        ),
    )
    out = base / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Built(sdist, wheel)


def test_the_sdist_carries_what_its_tests_need(built: Built) -> None:
    files = built.sdist_files
    expected = {
        "LICENSE",
        "README.md",
        "pyproject.toml",
        "dev",
        ".ci/run",
        ".ci/matrix",
        ".ci/sdist",
        "docker-compose.yml",
        "taskiq_batching/py.typed",
        "tests/__init__.py",
        "tests/conftest.py",
        "tests/helpers.py",
    }
    for folder in ("docs", "examples", "tests/unit", "tests/typing", "bench"):
        expected |= {
            str(path.relative_to(ROOT))
            for path in (ROOT / folder).rglob("*")
            if path.is_file()
            and "__pycache__" not in path.parts
            and "results" not in path.parts
        }
    assert expected <= files, sorted(expected - files)
    assert not [name for name in files if name.endswith((".pyc", ".pyo"))]
    assert not [name for name in files if name.startswith("bench/results/")]


def test_the_metadata_is_pep_639_with_urls_and_classifiers(built: Built) -> None:
    for metadata in (built.pkg_info, built.metadata):
        assert metadata["License-Expression"] == "MIT"
        assert metadata.get_all("License-File") == ["LICENSE"]
        classifiers = metadata.get_all("Classifier") or []
        assert not [c for c in classifiers if c.startswith("License ::")]
        for classifier in (
            "Typing :: Typed",
            "Framework :: AsyncIO",
            *(
                f"Programming Language :: Python :: 3.{minor}"
                for minor in range(10, 14)
            ),
        ):
            assert classifier in classifiers
        assert metadata["Requires-Python"] == ">=3.10"
        urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL") or [])
        assert set(urls) >= {"Homepage", "Repository", "Documentation", "Issues"}
        assert all(url.startswith(REPOSITORY) for url in urls.values())
        assert metadata.get_all("Keywords")
    assert built.pkg_info["Metadata-Version"] == built.metadata["Metadata-Version"]


def description_links(metadata: Message) -> list[str]:
    body = metadata.get_payload()
    assert isinstance(body, str)
    assert body.lstrip().startswith("# taskiq-batching")
    return re.findall(r"\]\(([^)\s]+)\)", body)


def test_the_readme_links_work_on_the_index_page(built: Built) -> None:
    links = description_links(built.pkg_info)
    assert links
    for link in links:
        assert link.startswith("https://"), f"relative link {link!r} in README.md"
        prefix = f"{REPOSITORY}/blob/main/"
        if link.startswith(prefix):
            target = link.removeprefix(prefix).split("#")[0]
            assert (ROOT / target).exists(), f"{link} names no file of the repository"
    assert description_links(built.metadata) == links


def test_the_wheel_holds_the_package_typed_and_its_license(built: Built) -> None:
    files = built.wheel_files
    assert "taskiq_batching/py.typed" in files
    assert f"{built.dist_info}/licenses/LICENSE" in files
    outside = [
        name
        for name in files
        if not name.startswith(("taskiq_batching/", f"{built.dist_info}/"))
    ]
    assert outside == []


def test_every_dependency_has_a_lower_bound_and_private_parts_an_upper(
    built: Built,
) -> None:
    extras = set(built.metadata.get_all("Provides-Extra") or []) - {"test", "docs"}
    assert extras >= {"redis", "amqp", "nats", "metrics", "opentelemetry"}
    runtime: list[Requirement] = []
    for line in built.metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras):
            runtime.append(requirement)
    names = {canonicalize_name(r.name) for r in runtime}
    assert names >= PRIVATE_PARTS_TOUCHED
    for requirement in runtime:
        operators = {spec.operator for spec in requirement.specifier}
        assert operators & {">=", "==", "~="}, f"{requirement}: no lower bound"
        if canonicalize_name(requirement.name) in PRIVATE_PARTS_TOUCHED:
            assert operators & {"<", "==", "~="}, f"{requirement}: no upper bound"


def test_the_version_is_the_package_s_and_the_changelog_s(built: Built) -> None:
    for metadata in (built.pkg_info, built.metadata):
        assert metadata["Version"] == taskiq_batching.__version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    released = re.findall(r"^## \[(\d[^\]]*)\]", changelog, flags=re.MULTILINE)
    assert released[0] == taskiq_batching.__version__
    assert "## [Unreleased]" in changelog


def test_pydantic_lower_bounds_install_on_every_python(built: Built) -> None:
    # pydantic 2.5 has no wheel for Python 3.13: 2.8 there (per-Python markers).
    pydantic = [
        Requirement(line)
        for line in built.metadata.get_all("Requires-Dist") or []
        if line.startswith("pydantic")
    ]
    lowest = {}
    for python in ("3.10", "3.11", "3.12", "3.13"):
        (requirement,) = [
            r
            for r in pydantic
            if r.marker is None or r.marker.evaluate({"python_version": python})
        ]
        lowest[python] = [
            s.version for s in requirement.specifier if s.operator == ">="
        ]
    assert lowest == {
        "3.10": ["2.5"],
        "3.11": ["2.5"],
        "3.12": ["2.5"],
        "3.13": ["2.8"],
    }
