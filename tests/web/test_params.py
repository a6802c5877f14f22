"""``web/params.py``: what the delivery routes take from a request, read one way for all of them
(what each route answers with it is tested by the route's own tests and ``test_edges``)."""

from __future__ import annotations

from typing import Any

import pytest

from reviewstream.errors import InvalidInput
from reviewstream.web.params import (
    HOLD,
    JOB_ID,
    LAST_EVENT_ID,
    LIMIT,
    OFFSET,
    START_OFFSET,
    Param,
    credentials,
    read,
)

POLL = (JOB_ID, OFFSET, LIMIT, HOLD)
EVENTS = (JOB_ID, START_OFFSET, LAST_EVENT_ID)


def scope(query: str = "", headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "query_string": query.encode("latin-1"), "headers": headers or []}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", (0, None, 20.0)),
        ("offset=12&limit=7&timeout=2.5", (12, 7, 2.5)),
        ("offset=12&offset=13", (13, None, 20.0)),  # the last of a repeated parameter
        ("offset=%31%32&unknown=%zz", (12, None, 20.0)),  # decoded; others ignored
        ("offset=9007199254740992", (2**53, None, 20.0)),  # the largest offset
        ("offset=00000000000000001", (1, None, 20.0)),
        ("timeout=1e-1&limit=10000", (0, 10000, 0.1)),
        ("timeout=300", (0, None, 300.0)),
        ("timeout=.5", (0, None, 0.5)),
    ],
)
def test_poll_parameters(query: str, expected: tuple[int, int | None, float]) -> None:
    got = read(scope(query), POLL, "j0b-_1")
    assert (got.job_id, got.offset, got.limit, got.hold) == ("j0b-_1", *expected)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("offset=-1", "offset"),
        ("offset=1.5", "offset"),
        ("offset=", "offset"),
        ("offset", "offset"),
        ("offset=+1", "offset"),  # a space, once decoded
        ("offset=%201", "offset"),
        ("offset=%D9%A1%D9%A2", "offset"),  # Arabic-Indic digits: isdigit() says yes
        ("offset=%EF%BC%91", "offset"),  # a fullwidth digit
        ("offset=9007199254740993", "offset"),
        ("offset=" + "9" * 40, "offset"),
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("timeout=0", "timeout"),
        ("timeout=-1", "timeout"),
        ("timeout=300.5", "timeout"),
        ("timeout=nan", "timeout"),
        ("timeout=inf", "timeout"),
        ("timeout=1_0", "timeout"),
        ("timeout=%201", "timeout"),
        ("timeout=soon", "timeout"),
    ],
)
def test_malformed_poll_parameters_are_named(query: str, named: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        read(scope(query), POLL, "job")
    assert refused.value.where == ("query", named)
    assert f"query.{named}: " in str(refused.value)


@pytest.mark.parametrize("job_id", ["a b", "x" * 65, "", "job!", "j\u00f6b", "\u0661"])
def test_malformed_job_ids_are_named(job_id: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        read(scope(), POLL, job_id)
    assert refused.value.where == ("path", "job_id")
    assert "job id must match" in str(refused.value) and repr(job_id[:40]) in str(refused.value)


@pytest.mark.parametrize(
    ("query", "headers", "start"),
    [
        ("", [], 0),
        ("offset=12", [], 12),
        ("", [(b"last-event-id", b"7")], 7),
        ("offset=3", [(b"last-event-id", b"0009")], 9),  # Last-Event-ID wins
        ("", [(b"last-event-id", b"1"), (b"last-event-id", b"2")], 1),  # the first header
    ],
)
def test_a_stream_starts_at_last_event_id_else_offset(
    query: str, headers: list[tuple[bytes, bytes]], start: int
) -> None:
    assert read(scope(query, headers), EVENTS, "job").start == start


@pytest.mark.parametrize("value", [b"-3", b"x", b"", b"1.0", b"9007199254740993"])
def test_a_malformed_last_event_id_is_named(value: bytes) -> None:
    with pytest.raises(InvalidInput) as refused:
        read(scope("", [(b"last-event-id", value)]), EVENTS, "job")
    assert refused.value.where == ("header", "Last-Event-ID")


def test_only_the_parameters_a_route_takes_are_read() -> None:
    assert read(scope("limit=zero&timeout=never"), EVENTS, "job").start == 0
    assert read(scope("", [(b"last-event-id", b"x")]), POLL, "job").offset == 0


@pytest.mark.parametrize(
    ("query", "headers", "expected"),
    [
        ("", [], (None, None)),
        ("token=tok&x=1", [], (None, "tok")),
        ("token=", [], (None, None)),  # an empty token is none
        ("token=a&token=b", [], (None, "b")),
        ("token=a%2Eb", [], (None, "a.b")),
        ("", [(b"authorization", b"Bearer k-1")], ("k-1", None)),
        ("", [(b"authorization", b"bEaReR  k2 ")], ("k2", None)),
        ("", [(b"authorization", b"Basic Zm9v")], (None, None)),
        ("", [(b"authorization", b"Bearer")], (None, None)),
        ("", [(b"authorization", b"Bearer   ")], (None, None)),
        ("token=t", [(b"authorization", b"Bearer k")], ("k", "t")),
    ],
)
def test_credentials(
    query: str, headers: list[tuple[bytes, bytes]], expected: tuple[str | None, str | None]
) -> None:
    assert credentials(scope(query, headers)) == expected


def test_each_parameter_documents_what_it_reads() -> None:
    """The OpenAPI schema of each parameter states the bounds its reader enforces."""
    params: list[Param] = [OFFSET, LIMIT, HOLD, START_OFFSET, LAST_EVENT_ID]
    for param in params:
        schema = param.openapi()["schema"]
        bounds = schema["anyOf"][0] if "anyOf" in schema else schema
        high = bounds["maximum"]
        ok = "300" if param is HOLD else str(high)
        over = "300.5" if param is HOLD else str(high + 1)
        assert param.parse(ok) == high
        with pytest.raises(InvalidInput):
            param.parse(over)
