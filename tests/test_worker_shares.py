"""``workers/shares.py``: under ``serve --processes N`` the API processes' worker shares add up to
the configured concurrency, and each live process holds a slot no other live process holds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from reviewstream.workers.shares import claim_slot, slot_file, worker_share

# A process that claims a slot of ``argv[1]`` (of 2), says which, and holds it until stdin ends.
CLAIM = """
import sys
from reviewstream.workers.shares import claim_slot
slot, held = claim_slot(sys.argv[1], 2)
print(slot, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("concurrency", [1, 2, 7, 32, 1000])
@pytest.mark.parametrize("processes", [1, 2, 3, 8])
def test_the_shares_add_up_to_the_concurrency(concurrency: int, processes: int) -> None:
    shares = [worker_share(concurrency, processes, slot) for slot in range(processes)]
    assert sum(shares) == concurrency
    assert max(shares) - min(shares) <= 1


def test_a_live_process_holds_its_slot_and_a_dead_ones_is_taken_again() -> None:
    with slot_file() as path:
        slot, held = claim_slot(path, 2)  # this process: the first free slot
        assert slot == 0
        other = subprocess.Popen(
            [sys.executable, "-c", CLAIM, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert other.stdout is not None
            assert other.stdout.readline().strip() == "1"  # 0 is held by this process
        finally:
            other.communicate("", timeout=10)
        held.close()  # this process's lock goes with its file, as with a process that died
        again = subprocess.run(
            [sys.executable, "-c", CLAIM, path],
            input="",
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert again.stdout.strip() == "0"
    assert not os.path.exists(path)
