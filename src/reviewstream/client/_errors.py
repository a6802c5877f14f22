"""The client's exception tree (drawn in ``reviewstream.client``'s docstring) and how an HTTP
refusal becomes one of its errors."""

from __future__ import annotations

from typing import Any

import httpx


class ClientError(Exception):
    """The API refused a request: ``status`` is the HTTP status, ``message`` its ``error`` text."""

    def __init__(self, status: int | None, message: str, detail: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if status is not None else message)
        self.status = status
        self.message = message
        self.detail = detail


class ConnectionLost(ClientError):
    """The server could not be reached, or kept failing, for ``max_retries`` attempts in a row."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class IntegrityError(ClientError):
    """The text received does not hash to the ``sha256`` the job's end carries."""

    def __init__(self, job_id: str, expected: str, got: str) -> None:
        super().__init__(
            None, f"job {job_id}: the text received has SHA-256 {got}, the server's is {expected}"
        )


class Retry(Exception):
    """A failure that reconnecting from the current offset may fix; never reaches the caller."""


def refusal(response: httpx.Response) -> ClientError:
    """The ``ClientError`` for a non-2xx answer, carrying the API's ``error`` and ``detail``."""
    try:
        body = response.json()
    except ValueError:
        message = response.text.strip()[:500] or response.reason_phrase
        return ClientError(response.status_code, message)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return ClientError(response.status_code, body["error"], body.get("detail"))
    return ClientError(response.status_code, str(body)[:500])


def transient(status: int) -> bool:
    """Whether an answer with this status may succeed when asked again (429 and 5xx)."""
    return status == 429 or status >= 500
