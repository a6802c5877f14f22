"""Durable Streams offsets: chunk offset N as 16 zero-padded decimal digits.

N is the number of chunks a reader already has: a job's token offset, the same in every mode.
Sixteen digits hold every offset up to 2^53 (our other modes' bound), so fixed width makes the
lexicographic order the numeric one, as the protocol asks. ``-1`` is 0 (the beginning) and
``now`` the stream's current end; the server never writes either. Anything else is malformed
(400 in this dialect) — but for the protocol reference server's own beginning,
``0000000000000000_0000000000000000``, which its conformance suite writes by hand (as a fork
offset): it reads as 0 here too.
"""

from __future__ import annotations

import re

from ..errors import InvalidInput

WIDTH = 16
MAX_OFFSET = 2**53
BEGINNING = "-1"
NOW = "now"
REFERENCE_ZERO = "0000000000000000_0000000000000000"
_OFFSET = re.compile(f"[0-9]{{{WIDTH}}}")


def encode(offset: int) -> str:
    """The protocol's offset for chunk offset ``offset``."""
    return f"{offset:0{WIDTH}d}"


def decode(raw: str | None, where: tuple[str, str] = ("query", "offset")) -> int | None:
    """The chunk offset ``raw`` names: 0 for ``-1`` or none, None for ``now`` (the end).

    Raises ``InvalidInput`` for anything the server did not write.
    """
    if raw is None or raw == BEGINNING or raw == REFERENCE_ZERO:
        return 0
    if raw == NOW:
        return None
    if _OFFSET.fullmatch(raw) is None or int(raw) > MAX_OFFSET:
        raise InvalidInput(
            where, f"offset must be -1, now or an offset this server wrote, got {raw[:40]!r}"
        )
    return int(raw)
