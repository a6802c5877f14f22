"""Who is calling, and what they may see: API keys, job-scoped stream tokens, principals.

- **API keys** (``REVIEWSTREAM_API_KEYS``): ``NAME:KEY`` or ``NAME:sha256:HEX`` entries. Only the
  SHA-256 of each key is kept; a presented key is hashed and compared with every entry in
  constant time. Unset: open mode, where every caller is ``OPEN``.
- **Stream tokens**: browsers cannot send headers on EventSource or WebSocket, so every job link
  carries a short-lived token, ``rst1.<job>.<tenant>.<expiry>.<mac>``: an HMAC-SHA256 over the
  rest, so any process with the secret verifies it without a Redis round trip. A token reads
  and cancels its one job, nothing else.
- **Principals**: what a credential amounts to. ``may_see`` is the one check every read path
  (the four modes, cancel) makes; a job another tenant owns is answered like an unknown one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass

from .errors import Forbidden, Unauthorized

TOKEN_PREFIX = "rst1"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller: a tenant (the API key's NAME), possibly limited to one job (a stream token)."""

    tenant: str
    job_id: str | None = None  # a stream token's job: read and cancel it, nothing else
    open: bool = False  # open mode: no keys configured, everyone may do everything

    def may_see(self, job_id: str, owner: str) -> bool:
        """May this caller read or cancel ``job_id``, which ``owner`` created?"""
        if self.job_id is not None:
            return self.job_id == job_id
        return self.open or owner == self.tenant

    def check_may_create(self) -> None:
        if self.job_id is not None:
            raise Forbidden(
                "a stream token reads and cancels one job; creating jobs needs an API key"
            )


OPEN = Principal(tenant="", open=True)


class Keyring:
    """The configured API keys, by the SHA-256 of each."""

    def __init__(self, entries: dict[str, bytes]) -> None:
        self._entries = list(entries.items())

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        """Read ``NAME:KEY,NAME:sha256:HEX``; a malformed entry is named by position only."""
        entries: dict[str, bytes] = {}
        for i, raw in enumerate(part.strip() for part in spec.split(",")):
            if not raw:
                continue
            name, sep, key = raw.partition(":")
            if not sep or not _NAME.match(name) or not key:
                raise ValueError(
                    f"REVIEWSTREAM_API_KEYS entry {i + 1} is not NAME:KEY (NAME of letters,"
                    " digits, '-' or '_')"
                )
            if name in entries:
                raise ValueError(f"REVIEWSTREAM_API_KEYS names {name!r} twice")
            algorithm, sep, digest = key.partition(":")
            if sep and algorithm == "sha256" and _HEX.match(digest):
                entries[name] = bytes.fromhex(digest)
            else:
                entries[name] = hashlib.sha256(key.encode()).digest()
        if not entries:
            raise ValueError("REVIEWSTREAM_API_KEYS is set but names no key")
        return cls(entries)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._entries]

    def tenant_of(self, key: str) -> str | None:
        """The NAME of ``key``, or None; compares with every entry, in constant time each."""
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for name, expected in self._entries:
            if hmac.compare_digest(digest, expected):
                found = name
        return found


class StreamTokens:
    """Signs and verifies job-scoped stream tokens."""

    def __init__(self, secret: bytes, ttl_seconds: int) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds

    def _mac(self, payload: str) -> str:
        mac = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, job_id: str, tenant: str, *, now: float | None = None) -> str:
        expiry = int((time.time() if now is None else now) + self.ttl_seconds)
        payload = f"{TOKEN_PREFIX}.{job_id}.{tenant}.{expiry}"
        return f"{payload}.{self._mac(payload)}"

    def verify(self, token: str, *, now: float | None = None) -> Principal:
        """The principal a token stands for; ``Unauthorized`` if forged, malformed or expired."""
        payload, _, mac = token.rpartition(".")
        parts = payload.split(".")
        if (
            len(parts) != 4
            or parts[0] != TOKEN_PREFIX
            or not hmac.compare_digest(mac.encode(), self._mac(payload).encode())
        ):
            raise Unauthorized("invalid stream token")
        _, job_id, tenant, expiry = parts
        if not expiry.isdigit() or int(expiry) < (time.time() if now is None else now):
            raise Unauthorized("stream token expired: get a fresh one from GET /jobs/{id}")
        return Principal(tenant=tenant, job_id=job_id)


def is_stream_token(credential: str) -> bool:
    return credential.startswith(TOKEN_PREFIX + ".")


class Gatekeeper:
    """Turns the credentials of a request into a ``Principal``.

    ``bearer`` is the ``Authorization: Bearer`` value (an API key or a stream token), ``token``
    the ``?token=`` query parameter (a stream token only: never an API key in a URL).
    """

    def __init__(self, keyring: Keyring | None, tokens: StreamTokens) -> None:
        self.keyring = keyring
        self.tokens = tokens

    @property
    def open(self) -> bool:
        return self.keyring is None

    def principal(self, bearer: str | None, token: str | None) -> Principal:
        if self.keyring is None:
            return OPEN
        if bearer:
            if is_stream_token(bearer):
                return self.tokens.verify(bearer)
            tenant = self.keyring.tenant_of(bearer)
            if tenant is None:
                raise Unauthorized("invalid API key")
            return Principal(tenant=tenant)
        if token:
            if not is_stream_token(token):
                raise Unauthorized(
                    "the token parameter takes a job link's stream token; send API keys in"
                    " the Authorization header"
                )
            return self.tokens.verify(token)
        raise Unauthorized(
            "missing credentials: send 'Authorization: Bearer <API key>', or use a job link"
            " (it carries a stream token)"
        )

    def token_for(self, job_id: str, principal: Principal) -> str | None:
        """The stream token a job's links carry; None in open mode, which needs none."""
        if self.keyring is None:
            return None
        return self.tokens.issue(job_id, principal.tenant)
