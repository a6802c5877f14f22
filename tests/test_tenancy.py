"""API keys and stream tokens, as units: parsing, constant-time lookup, signing, scope."""

from __future__ import annotations

import hashlib
import time

import pytest

from reviewstream.errors import Forbidden, Unauthorized
from reviewstream.tenancy import OPEN, Gatekeeper, Keyring, Principal, StreamTokens


def test_keys_plain_and_sha256_name_their_tenant() -> None:
    digest = hashlib.sha256(b"bob-secret").hexdigest()
    ring = Keyring.parse(f"alice:alice-secret, bob:sha256:{digest}")
    assert ring.names == ["alice", "bob"]
    assert ring.tenant_of("alice-secret") == "alice"
    assert ring.tenant_of("bob-secret") == "bob"
    assert ring.tenant_of(f"sha256:{digest}") is None  # the digest itself is no key
    assert ring.tenant_of("nobody") is None


@pytest.mark.parametrize("spec", ["alice", ":key", "al ice:key", "a:k,a:k2", " , "])
def test_malformed_key_entries_are_refused_without_showing_the_key(spec: str) -> None:
    with pytest.raises(ValueError) as info:
        Keyring.parse(spec)
    assert "key2" not in str(info.value) and "REVIEWSTREAM_API_KEYS" in str(info.value)


def test_a_token_opens_its_job_only_and_never_creates() -> None:
    tokens = StreamTokens(b"secret", ttl_seconds=60)
    caller = tokens.verify(tokens.issue("job-a", "alice"))
    assert caller == Principal(tenant="alice", job_id="job-a")
    assert caller.may_see("job-a", "alice") and not caller.may_see("job-b", "alice")
    with pytest.raises(Forbidden):
        caller.check_may_create()


def test_expired_forged_and_foreign_tokens_are_unauthorized() -> None:
    tokens = StreamTokens(b"secret", ttl_seconds=60)
    token = tokens.issue("job-a", "alice")
    with pytest.raises(Unauthorized, match="expired"):
        tokens.verify(tokens.issue("job-a", "alice", now=time.time() - 61))
    for forged in (token[:-4] + "AAAA", token.replace("job-a", "job-b"), "rst1.x.y.z"):
        with pytest.raises(Unauthorized, match="invalid"):
            tokens.verify(forged)
    with pytest.raises(Unauthorized):
        StreamTokens(b"other secret", 60).verify(token)


def test_gatekeeper_reads_bearer_and_query_token() -> None:
    tokens = StreamTokens(b"secret", 60)
    gate = Gatekeeper(Keyring.parse("alice:k1"), tokens)
    assert gate.principal("k1", None) == Principal(tenant="alice")
    token = tokens.issue("j", "alice")
    assert gate.principal(token, None).job_id == "j"
    assert gate.principal(None, token).job_id == "j"
    with pytest.raises(Unauthorized, match="Authorization header"):
        gate.principal(None, "k1")  # never an API key in a URL
    with pytest.raises(Unauthorized, match="missing"):
        gate.principal(None, None)
    with pytest.raises(Unauthorized, match="invalid API key"):
        gate.principal("k2", None)


def test_open_mode_lets_everyone_in_and_issues_no_tokens() -> None:
    gate = Gatekeeper(None, StreamTokens(b"", 60))
    assert gate.principal(None, None) is OPEN
    assert OPEN.may_see("any", "someone")
    assert gate.token_for("job", OPEN) is None
