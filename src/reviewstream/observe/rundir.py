"""The multiprocess directory of a ``serve`` run (``observe.exposition`` says why). No
prometheus_client import here: the directory must be set before prometheus_client is imported,
which picks its value class then."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "reviewstream-metrics-"


@contextlib.contextmanager
def run_directory() -> Iterator[str | None]:
    """A multiprocess directory for this run and the processes it starts (inherited through
    the environment), removed at the end; the operator's ``PROMETHEUS_MULTIPROC_DIR`` when set.
    Must be entered before prometheus_client is imported: it picks its value class then."""
    if os.environ.get(MULTIPROC_ENV):
        yield os.environ[MULTIPROC_ENV]
        return
    if "prometheus_client" in sys.modules:  # too late: this process keeps its series in memory
        yield None
        return
    _remove_dead_runs()
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def _remove_dead_runs() -> None:
    """Remove the directories of runs whose process is gone: uvicorn ends a process by
    re-raising the SIGTERM it handled, before any cleanup of ours can run."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's
