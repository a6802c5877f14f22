"""Each API process's share of the workers under ``serve --processes N`` (``thread`` and
``inline`` placements): together, the processes run the configured concurrency.

A process learns which share is its own by locking one byte of a file the parent made (its
slot): the kernel releases the lock when the process dies, so a replacement takes its
predecessor's slot and the shares still add up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def worker_share(concurrency: int, processes: int, slot: int) -> int:
    """The jobs API process ``slot`` (of ``processes``) runs at once: together, ``concurrency``."""
    return concurrency // processes + (1 if slot < concurrency % processes else 0)


def claim_slot(path: str, processes: int) -> tuple[int, IO[bytes]]:
    """A slot number in ``range(processes)`` no other live API process holds, held by a lock on
    one byte of ``path`` until this process exits (so a replacement takes its predecessor's)."""
    slots = open(path, "r+b")  # held for the life of the process
    while True:
        for slot in range(processes):
            with contextlib.suppress(OSError):
                fcntl.lockf(slots, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
                return slot, slots
        time.sleep(0.05)  # a process being replaced still holds it


@contextlib.contextmanager
def slot_file() -> Iterator[str]:
    """A private file the API processes claim their worker shares in."""
    directory = tempfile.mkdtemp(prefix="reviewstream-serve-")
    path = os.path.join(directory, "slots")
    Path(path).touch()
    try:
        yield path
    finally:
        os.unlink(path)
        os.rmdir(directory)
