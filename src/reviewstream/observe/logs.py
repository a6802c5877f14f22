"""The process's logging, configured in one place: text (the default) or one JSON object per
line (``REVIEWSTREAM_LOG_FORMAT=json``), and no secret in any line.

``configure_logging`` installs one handler on the root logger and makes uvicorn's loggers
(``uvicorn.error``, ``uvicorn.access``) propagate to it: ``reviewstream serve`` runs uvicorn
with ``log_config=None``, so uvicorn installs no handler of its own and every line the process
writes goes through the same formatter. ``serve``, each API process of ``serve --processes N``
(its app factory) and ``reviewstream worker`` call it.

Redaction is done on the formatted line, whatever produced it (a message, its arguments, a
traceback): the ``token`` query parameter (uvicorn's access lines and its WebSocket lines name
the path with its query), stream tokens wherever they appear (``rst1.…``), ``Authorization``
and ``X-Api-Key`` values, ``Bearer`` credentials, passwords in URLs (``redis://:pw@host``), and
the configured secrets themselves (API keys, the token secret, the providers' keys). A line
with none of their markers costs one lower-casing and a few substring tests.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Literal

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[redacted]"

# A value ends at whitespace, a quote, a backslash (JSON escapes) or a separator.
_VALUE = r"""[^\s"'\\&;,]+"""
_KEEP = rf"\1{REDACTED}"  # what precedes the value stays
_PATTERNS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    # (marker that must be in the lower-cased line, pattern, replacement)
    ("token", re.compile(rf"(?i)(token=){_VALUE}"), _KEEP),
    ("token", re.compile(rf"""(?i)(stream-token["']?\s*[:=]\s*["']?){_VALUE}"""), _KEEP),
    ("rst1.", re.compile(rf"\brst1\.{_VALUE}"), f"rst1.{REDACTED}"),
    (
        "authorization",
        re.compile(rf"""(?i)(authorization["']?\s*[:=]\s*["']?)(?:[A-Za-z]+\s+)?{_VALUE}"""),
        _KEEP,
    ),
    ("bearer", re.compile(rf"(?i)(bearer\s+){_VALUE}"), _KEEP),
    ("api", re.compile(rf"""(?i)(api[-_]?key["']?\s*[:=]\s*["']?){_VALUE}"""), _KEEP),
    ("://", re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@\"']*:)[^\s@/\"']+@"), _KEEP + "@"),
)

# The fields a JSON line carries when its record has them (``extra=``, or read from uvicorn's).
FIELDS = ("job_id", "key", "mode", "status", "duration_ms")

# A delivery path: its job and mode, for uvicorn's access and WebSocket lines.
_JOB_PATH = re.compile(r"^/jobs/([^/?]+)(/[^?]*)?")
_MODE_OF_TAIL = {"": "short_poll", "/long-poll": "long_poll", "/events": "sse", "/ws": "websocket"}


class Redactor:
    """Removes secrets from a line: the configured ones, and anything shaped like one."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so that a secret containing another is removed whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        for secret in self._secrets:
            if secret in line:
                line = line.replace(secret, REDACTED)
        lowered = line.lower()
        for marker, pattern, replacement in _PATTERNS:
            if marker in lowered:
                line = pattern.sub(replacement, line)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, and each of
    ``FIELDS`` the record has; uvicorn's access lines add ``method``, ``path``, ``status``
    (and ``job_id``, ``mode`` on a delivery path), its WebSocket lines ``path`` likewise."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.name.startswith("uvicorn"):
            entry.update(_uvicorn_fields(record))
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _uvicorn_fields(record: logging.LogRecord) -> dict[str, Any]:
    args = record.args
    if not isinstance(args, tuple) or len(args) < 2:
        return {}
    fields: dict[str, Any] = {}
    if record.name == "uvicorn.access" and len(args) == 5:
        # '%s - "%s %s HTTP/%s" %d': client, method, path with query, version, status
        fields.update(method=args[1], path=args[2], status=args[4])
    elif record.msg.__class__ is str and '"WebSocket %s"' in record.msg:
        fields.update(path=args[1], mode="websocket")
        if len(args) > 2:
            fields["status"] = args[2]
    path = fields.get("path")
    if isinstance(path, str):
        match = _JOB_PATH.match(path)
        if match is not None:
            fields["job_id"] = match.group(1)
            mode = _MODE_OF_TAIL.get(match.group(2) or "")
            if mode is not None:
                fields.setdefault("mode", mode)
    return fields


class RedactingFormatter(logging.Formatter):
    """A formatter's line with the secrets removed."""

    def __init__(self, inner: logging.Formatter, redact: Redactor) -> None:
        super().__init__()
        self._inner = inner
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(self._inner.format(record))


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure_logging`` installs (and replaces when called again)."""


def configure_logging(
    log_format: LogFormat = "text", *, secrets: Iterable[str] = (), level: int = logging.INFO
) -> None:
    """Send every log line of this process, uvicorn's included, to stderr in ``log_format``,
    with ``secrets`` (and anything shaped like a credential) redacted. Idempotent: a second
    call replaces what the first installed."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    inner = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler = _Handler(sys.stderr)
    handler.setFormatter(RedactingFormatter(inner, Redactor(secrets)))
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        for each in list(logger.handlers):
            logger.removeHandler(each)
        logger.propagate = True
    # Warnings and uncaught exceptions are lines of the process too: through the same handler.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("reviewstream").critical("uncaught exception", exc_info=(kind, value, tb))


def secrets_of(settings: Any) -> list[str]:
    """The secrets a ``Settings`` holds: API keys, the token secret, the providers' keys, and
    the password of its Redis URL."""
    found: list[str] = []
    for name in ("token_secret", "openai_api_key", "anthropic_api_key"):
        value = getattr(settings, name, None)
        if value is not None:
            found.append(value.get_secret_value())
    keys = getattr(settings, "api_keys", None)
    if keys is not None:
        for entry in keys.get_secret_value().split(","):
            _, _, key = entry.strip().partition(":")
            if key.startswith("sha256:"):
                key = key[len("sha256:") :]
            if key:
                found.append(key)
    url = getattr(settings, "redis_url", None)
    if url:
        match = re.match(r"^[a-z][a-z0-9+.-]*://[^\s:/@]*:([^\s@/]+)@", url)
        if match is not None:
            found.append(match.group(1))
    return found
