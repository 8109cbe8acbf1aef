"""Run ``taskiq worker`` in this process under pyinstrument.

``python -m bench.profile_worker OUT_PREFIX WORKER_ARGS...``: the same
worker function the CLI runs in its child process (``start_listen``), in
the main process, so the sampler sees it. On SIGTERM the worker stops
(the plugin wakes it), and the profile is written to ``OUT_PREFIX.txt``
(pyinstrument's call tree), ``OUT_PREFIX.html``, ``OUT_PREFIX.json``
(self time per function and per package, for ``bench.report``) and
``OUT_PREFIX.pyisession`` (the samples, for ``bench.profile_owners``).
"""

import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from pyinstrument import Profiler
from taskiq.cli.worker.args import WorkerArgs
from taskiq.cli.worker.run import start_listen

#: pyinstrument's sampling interval, seconds.
INTERVAL = 0.001


def _package(path: str) -> str:
    """A short owner of a source file: the package under site-packages."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/lib/python3" in path:
        rest = path.split("/lib/python3", 1)[1].split("/", 2)
        return "stdlib:" + (rest[1].removesuffix(".py") if len(rest) > 1 else "?")
    if "/taskiq_batching/" in path:
        return "taskiq_batching"
    if "/bench/" in path:
        return "bench"
    return path or "?"


def self_times(root: Any) -> tuple[dict[str, float], dict[str, float], float]:
    """Self time per function and per package over a pyinstrument tree.

    pyinstrument keeps a frame's own time in synthetic children (``[self]``,
    ``[await]``): they are counted as the time of the frame that holds them.
    """
    functions: defaultdict[str, float] = defaultdict(float)
    packages: defaultdict[str, float] = defaultdict(float)
    stack = [root]
    while stack:
        frame = stack.pop()
        own = 0.0
        for child in frame.children:
            if child.is_synthetic:
                own += child.time
            else:
                stack.append(child)
        if own <= 0:
            continue
        path = frame.file_path or ""
        where = f"{_package(path)}:{Path(path).name}:{frame.line_no}"
        functions[f"{frame.function} ({where})"] += own
        packages[_package(path)] += own
    return dict(functions), dict(packages), root.time


def inclusive_times(root: Any) -> dict[str, float]:
    """Time spent in each function including its callees (recursion once)."""
    totals: defaultdict[str, float] = defaultdict(float)
    stack: list[tuple[Any, frozenset[str]]] = [(root, frozenset())]
    while stack:
        frame, above = stack.pop()
        if frame.is_synthetic:
            continue
        path = frame.file_path or ""
        name = f"{frame.function} ({_package(path)}:{Path(path).name}:{frame.line_no})"
        if name not in above:
            totals[name] += frame.time
        below = above | {name}
        stack.extend((child, below) for child in frame.children)
    return dict(totals)


def main() -> None:
    out = Path(sys.argv[1])
    args = WorkerArgs.from_cli(sys.argv[2:])
    logging.basicConfig(level=args.log_level)
    logging.getLogger("taskiq").setLevel(args.log_level)
    profiler = Profiler(interval=INTERVAL)
    profiler.start()
    try:
        start_listen(args)
    finally:
        session = profiler.stop()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".txt").write_text(
            profiler.output_text(unicode=False, color=False, show_all=False)
        )
        out.with_suffix(".html").write_text(profiler.output_html())
        # The whole session too: bench.profile_owners attributes its samples.
        session.save(str(out.with_suffix(".pyisession")))
        root = session.root_frame()
        if root is not None:
            functions, packages, total = self_times(root)
            out.with_suffix(".json").write_text(
                json.dumps(
                    {
                        "total": total,
                        "functions": functions,
                        "packages": packages,
                        "inclusive": inclusive_times(root),
                    }
                )
            )


if __name__ == "__main__":
    main()
