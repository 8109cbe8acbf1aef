"""Run taskiq's own ``tests/receiver`` with taskiq-batching active.

``python -m tests.upstream.run_taskiq_tests [--without-plugin]
[--receiver taskiq|batching|both] [-- PYTEST ARGS]``

Downloads the source distribution of the installed taskiq version,
unpacks its tests into a temporary directory, installs the test
dependencies those tests lack, and runs pytest there with the activate
plugin (or, with ``--without-plugin``, without it). With the plugin, the
suite runs once per Receiver: taskiq's own (the plugin finds it by its
frames) and ``BatchingReceiver`` (it hands itself to the plugin), both by
default. Exit code: pytest's, the worst of the runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

from tests.upstream import harness

TARGETS = ("tests/receiver",)


def download_sdist(version: str, dest: Path) -> Path:
    """The source distribution of ``taskiq==version``, downloaded by pip."""
    dest.mkdir(parents=True, exist_ok=True)
    harness.log(f"downloading the taskiq {version} sdist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"taskiq=={version}",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--quiet",
            "-d",
            str(dest),
        ],
        check=True,
    )
    archives = sorted(dest.glob("taskiq-*.tar.gz"))
    if len(archives) != 1:
        raise SystemExit(f"expected one taskiq sdist in {dest}, found {archives}")
    return archives[0]


def receivers(args: argparse.Namespace) -> list[str]:
    """The Receivers to run the suite with, one run each."""
    if args.without_plugin:
        return ["taskiq"]
    return ["taskiq", "batching"] if args.receiver == "both" else [args.receiver]


def run_once(root: Path, version: str, args: argparse.Namespace, receiver: str) -> int:
    """Run the suite with one Receiver; return the run's exit code."""
    return harness.run_suite(
        root,
        TARGETS,
        args,
        f"taskiq {version} tests/receiver, {receiver} Receiver",
        env={harness.RECEIVER_ENV: receiver},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; return pytest's exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.upstream.run_taskiq_tests",
        description=__doc__.splitlines()[0],
    )
    harness.common_arguments(parser)
    parser.add_argument(
        "--receiver",
        choices=("taskiq", "batching", "both"),
        default="both",
        help="the suite's Receiver: taskiq's, BatchingReceiver, or one run "
        "of each (default); ignored with --without-plugin",
    )
    args = parser.parse_args(argv)
    version = harness.installed_version("taskiq")
    harness.exit_on_sigterm()
    workdir = harness.make_workdir("taskiq-upstream-")
    try:
        sdist = download_sdist(version, workdir / "download")
        root = workdir / f"taskiq-{version}"
        with tarfile.open(sdist) as archive:
            count = harness.unpack(archive, root, harness.suite_files, strip=1)
        harness.log(f"unpacked {count} files of {sdist.name} into {root}")
        harness.ensure_test_dependencies(root, TARGETS, install=not args.no_install)
        codes = [
            run_once(root, version, args, receiver) for receiver in receivers(args)
        ]
        return max(codes)
    finally:
        harness.remove_workdir(workdir, args.keep)


if __name__ == "__main__":
    sys.exit(main())
