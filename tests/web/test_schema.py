"""schemathesis over the OpenAPI document the app serves: no input gets a 5xx, every answer is
one the document declares (status, content type, schema), and every 4xx body is the one error
shape, ``{"error": str, "detail": ...}``.

Three callers, each one test with a subtest per operation: open mode, and keyed mode with and
without the key. Every operation of the document is covered; the job ids schemathesis makes up
are sometimes swapped for real jobs' (one done, one cancelled), so the delivery modes answer 200
and cancel answers 409, not only 404.

The app runs under a real uvicorn in a thread of its own, with its own event loop: schemathesis
calls synchronously, so a server on the session's event loop would never get to answer. The
simulated model writes at full speed, so streams (SSE, ``/generate``) end at once; a held long
poll is bounded by the server's maximum (0.5 s here); a stream still open after the request
timeout would be cut short by schemathesis itself.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from reviewstream.settings import Settings
from reviewstream.web import create_app, server_options
from reviewstream.web.params import JOB_ID_PATTERN
from reviewstream.web.routes import durable

from tests.support.servers import free_port

KEY = "schema-fuzz-key"
REQUEST_TIMEOUT = 3.0
EXAMPLES = 25  # per operation and caller, in the fuzzing phase (examples and coverage add theirs)


@schemathesis.check
def error_body_shape(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    """Every 4xx is ``{"error": str, "detail": ...}`` in JSON, whoever answered it (but for a
    ``HEAD``'s, which has no body by HTTP)."""
    if not 400 <= response.status_code < 500 or case.method.upper() == "HEAD":
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), (
        f"{response.status_code} answered as {content_type!r}, not JSON"
    )
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error", "detail"}, (
        f"{response.status_code} body is not {{error, detail}}: {body!r}"
    )
    assert isinstance(body["error"], str) and body["error"], f"no error message: {body!r}"
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    error_body_shape,
]


@contextlib.contextmanager
def serving_in_thread(settings: Settings) -> Iterator[str]:
    """The app under uvicorn in a thread with its own event loop; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        **server_options(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="schema-uvicorn")
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "uvicorn did not stop"


def fast_settings(redis_url: str, name: str, **changes: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_url,
        key_prefix=f"rs-schema-{name}",
        sim_tokens_per_second=100000,
        sim_first_token_ms=0,
        long_poll_max_timeout=0.5,
        worker_grace_seconds=0.2,
        **changes,
    )


@pytest.fixture(scope="module", autouse=True)
def short_durable_sse() -> Iterator[None]:
    """A Durable Streams SSE read of an open stream ends within the request timeout (the
    server's periodic close, made short), as every other stream here does."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(durable, "SSE_CLOSE_SECONDS", REQUEST_TIMEOUT / 3)
        yield


@pytest.fixture(scope="module")
def open_server(redis_server: str) -> Iterator[str]:
    with serving_in_thread(fast_settings(redis_server, "open")) as base:
        yield base


@pytest.fixture(scope="module")
def keyed_server(redis_server: str) -> Iterator[str]:
    settings = fast_settings(
        redis_server, "keyed", api_keys=f"fuzz:{KEY}", token_secret="schema-secret"
    )
    with serving_in_thread(settings) as base:
        yield base


@dataclass(frozen=True)
class Caller:
    base_url: str
    headers: dict[str, str]
    session: requests.Session
    # The coverage phase's boundary values, where they reach validation (the callers who get
    # past the key); without a key, every one of them would only meet the same 401.
    coverage: bool


@pytest.fixture(params=["open", "keyed with key", "keyed without key"])
def caller(request: pytest.FixtureRequest) -> Iterator[Caller]:
    if request.param == "open":
        base, headers = request.getfixturevalue("open_server"), {}
    else:
        base = request.getfixturevalue("keyed_server")
        headers = {"Authorization": f"Bearer {KEY}"} if request.param == "keyed with key" else {}
    with requests.Session() as session:  # one connection for the run, not one per case
        yield Caller(base, headers, session, coverage=request.param != "keyed without key")


@pytest.fixture
def jobs(caller: Caller) -> list[str]:
    """Real jobs on the caller's server, one done and one cancelled (the owner's, if keyed)."""
    review = {"employee_name": "Ada", "employee_review_points": "Ships", "length_words": 50}
    owner = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=caller.base_url, headers=owner, timeout=10) as c:
        done = c.post("/jobs", json=review).json()["id"]
        cancelled = c.post("/jobs", json={**review, "model": "sim-gpt-4"}).json()["id"]
        assert c.delete(f"/jobs/{cancelled}").status_code == 204
        deadline = time.monotonic() + 10
        while not c.get(f"/jobs/{done}").json()["done"]:
            assert time.monotonic() < deadline, "the simulated job did not end"
            time.sleep(0.01)
    return [done, cancelled]


@pytest.fixture
def api_schema(caller: Caller, jobs: list[str]) -> schemathesis.BaseSchema:
    """The document as the server serves it, with deterministic, bounded generation."""
    config = schemathesis.Config.from_dict(
        {
            "request-timeout": REQUEST_TIMEOUT,
            "suppress-health-check": ["all"],
            "phases": {"coverage": {"enabled": caller.coverage}},
            "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
        }
    )
    schema = schemathesis.openapi.from_url(f"{caller.base_url}/openapi.json", config=config)

    @schema.hook
    def flatmap_path_parameters(
        context: schemathesis.HookContext, path_parameters: dict[str, Any] | None
    ) -> st.SearchStrategy[dict[str, Any] | None]:
        # A valid made-up id stays, or becomes a real job's; an invalid one stays invalid (the
        # case is meant to be refused).
        made_up = (path_parameters or {}).get("job_id")
        if (
            path_parameters is None
            or not isinstance(made_up, str)
            or not re.fullmatch(JOB_ID_PATTERN, made_up)
        ):
            return st.just(path_parameters)
        return st.sampled_from([{**path_parameters, "job_id": i} for i in [made_up, *jobs]])

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_the_document_holds_for_any_input(case: schemathesis.Case[Any], caller: Caller) -> None:
    case.call_and_validate(
        base_url=caller.base_url,
        session=caller.session,
        headers=caller.headers,
        checks=CHECKS,
        timeout=REQUEST_TIMEOUT,
    )
