"""Surviving a flaky model upstream: error mapping, retries and timeouts.

Two halves:

* the HTTP boundary shared by the OpenAI and Anthropic providers — :func:`check_status` turns a
  non-2xx answer into ``UpstreamStatusError`` (with a bounded excerpt of the body and the parsed
  ``Retry-After``), and :func:`wrap_httpx_error` turns httpx exceptions into the
  ``ProviderError`` tree;
* :func:`resilient_stream`, which wraps any provider's stream with retries *before the first
  delta only* (once text reached a follower, a retry would repeat or contradict it), a
  first-token timeout, an idle timeout between deltas, and a guaranteed ``aclose()`` of the
  inner stream so that a cancelled job also hangs up on the model.

The per-request httpx timeouts cover connecting only; reading is bounded here, because only
this layer knows whether it is waiting for the first token or for the next one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator
from email.utils import parsedate_to_datetime

import httpx

from ..errors import (
    ProviderError,
    UpstreamInterrupted,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..models import Usage
from ..observe import metrics as observe
from .base import Prompt, Provider

logger = logging.getLogger(__name__)

__all__ = [
    "backoff_delay",
    "check_status",
    "parse_retry_after",
    "resilient_stream",
    "upstream_timeout",
    "wrap_httpx_error",
]

_ERROR_BODY_LIMIT = 2048


def upstream_timeout(connect_timeout: float) -> httpx.Timeout:
    """Per-request timeouts for a streaming call: bounded connect, unbounded reads.

    Reads are left to :func:`resilient_stream`, which tells a slow first token from silence.
    """
    return httpx.Timeout(None, connect=connect_timeout, pool=connect_timeout)


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait according to ``retry-after-ms`` (OpenAI) or ``Retry-After``.

    ``Retry-After`` may be delta-seconds or an HTTP date; anything unparsable is ignored.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def check_status(response: httpx.Response, upstream: str) -> None:
    """Raise ``UpstreamStatusError`` unless ``response`` is 2xx.

    Reads at most 2 KB of the error body: enough for the provider's message, and a misbehaving
    server cannot make us buffer an endless answer.
    """
    if response.is_success:
        return
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= _ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        pass  # the status alone is the error; a broken error body adds nothing
    detail = body[:_ERROR_BODY_LIMIT].decode("utf-8", "replace").strip()
    raise UpstreamStatusError(
        response.status_code,
        f"{upstream}: {detail or response.reason_phrase}",
        retry_after=parse_retry_after(response.headers),
    )


def wrap_httpx_error(exc: httpx.HTTPError, upstream: str, *, answered: bool) -> ProviderError:
    """The ``ProviderError`` for an httpx failure; ``answered``: response headers had arrived.

    A connection that breaks after the answer started is a truncated stream, not an
    unavailable upstream: the difference decides whether the error reads as "try later" or
    "the output is incomplete".
    """
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{upstream}: timed out ({type(exc).__name__}): {exc}")
    if isinstance(exc, httpx.TransportError):
        if answered:
            return UpstreamInterrupted(
                f"{upstream}: connection broke mid-stream (truncated): {exc or type(exc).__name__}"
            )
        return UpstreamUnavailable(
            f"{upstream}: cannot reach upstream: {exc or type(exc).__name__}"
        )
    return UpstreamProtocolError(f"{upstream}: {type(exc).__name__}: {exc}")


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds before retry number ``attempt + 1``: full jitter over ``base * 2**attempt``.

    A server's ``Retry-After`` wins over a shorter jittered value, but never exceeds ``cap``,
    so a server asking for minutes cannot park a job that long.
    """
    ceiling = min(cap, base * 2 ** min(attempt, 32))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(cap, delay)


async def resilient_stream(
    provider: Provider,
    prompt: Prompt,
    *,
    max_retries: int,
    backoff_base: float,
    backoff_max: float,
    first_token_timeout: float,
    idle_timeout: float,
) -> AsyncGenerator[str | Usage, None]:
    """``provider.stream(prompt)`` with retries before the first delta and read timeouts.

    Retries only ``ProviderError`` with ``retryable`` set (connect errors, 408/409/429, 5xx,
    529, timeouts), at most ``max_retries`` times, and only while nothing has been yielded.
    Raises ``UpstreamTimeout`` if an attempt yields nothing within ``first_token_timeout`` or
    goes silent for ``idle_timeout`` after that. The inner stream is always closed, also
    when this generator is closed early or its task is cancelled.

    A continued prompt (``prompt.continuation``) is retried as it is: a try that failed before
    its first delta stored nothing, so the text to continue after has not changed.
    """
    attempt = 0
    started = time.monotonic()
    while True:
        inner = provider.stream(prompt)
        yielded = False
        watch = _ReadTimeout()
        try:
            while True:
                limit = idle_timeout if yielded else first_token_timeout
                watch.start(limit)
                try:
                    item = await anext(inner)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not watch.expired():
                        raise
                    what = "upstream silent for" if yielded else "no first token within"
                    raise UpstreamTimeout(f"{provider.name}: {what} {limit:g}s") from None
                finally:
                    watch.waiting = False
                if not yielded:
                    observe.first_token(provider.name, time.monotonic() - started)
                yielded = True
                yield item
        except ProviderError as err:
            observe.provider_error(provider.name, type(err).__name__)
            if yielded or not err.retryable or attempt >= max_retries:
                raise
            delay = backoff_delay(
                attempt,
                base=backoff_base,
                cap=backoff_max,
                retry_after=getattr(err, "retry_after", None),
            )
            logger.warning(
                "%s failed before the first token (%s); retry %d/%d in %.2fs",
                provider.name,
                err,
                attempt + 1,
                max_retries,
                delay,
            )
        finally:
            watch.close()
            await _aclose(inner)
        await asyncio.sleep(delay)
        attempt += 1


class _ReadTimeout:
    """The read timeout of one stream, as ``asyncio.timeout`` around each read but with one
    timer per stream, moved only when it fires early: a timer per token would cost more than
    the token. ``start`` before each read (``waiting`` is cleared after it); when a read lasts
    ``limit``, the task is cancelled, and ``expired`` turns that cancellation into the timeout.
    """

    __slots__ = ("_cancelling", "_fired", "_handle", "_loop", "_task", "limit", "since", "waiting")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False
        self.limit = 0.0
        self.since = 0.0
        self.waiting = False

    def start(self, limit: float) -> None:
        """A read begins, in the current task."""
        task = self._task = asyncio.current_task()
        assert task is not None
        self._cancelling = task.cancelling()
        self.limit = limit
        self.since = now = self._loop.time()
        self.waiting = True
        due = now + limit
        handle = self._handle
        if handle is not None and handle.when() > due:  # a shorter limit than the timer's
            handle.cancel()
            handle = None
        if handle is None:
            self._handle = self._loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if not self.waiting:
            return  # the next read arms it again
        due = self.since + self.limit
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._fire)
            return
        self._fired = True
        assert self._task is not None
        self._task.cancel()

    def expired(self) -> bool:
        """Whether the cancellation being handled is this timeout's (and not also another's)."""
        if not self._fired:
            return False
        self._fired = False
        assert self._task is not None
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def _aclose(stream: AsyncGenerator[str | Usage, None]) -> None:
    # Closing the provider's generator is what hangs up the upstream connection.
    await stream.aclose()
