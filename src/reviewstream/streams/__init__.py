"""The Durable Streams dialect: offsets, headers and bytes of the protocol, no I/O.

A Durable Streams offset is an opaque, fixed-width, lexicographically sortable encoding of the
stream's chunk offset N — the same N as a job's token offset in every other mode (``offsets``).
``wire`` writes what a reader gets: catch-up bodies, SSE ``data`` and ``control`` events,
ETags and cursors. The routes are ``web/routes/durable.py``.
"""
