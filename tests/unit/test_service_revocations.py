"""This worker's copy of the revoked services: what it refuses, with which reason, and when it cannot say."""

from __future__ import annotations

import pytest

from ztproxy.config.sessions import SessionsConfig
from ztproxy.errors import TokenServiceUnavailable
from ztproxy.policy.model import Service
from ztproxy.service_revocations import Revocation, RevokedServices, ServiceRevocations, _announced
from ztproxy.sessions.memory import MemoryStore

BILLING = Service(subject="billing", client_id="billing", scopes=frozenset({"orders.read"}), token_id="jti-1")
WORKLOAD = Service(subject="spiffe://corp.example/jobs/nightly", client_id="nightly",
                   spiffe_id="spiffe://corp.example/jobs/nightly", token_id="jti-2")


def revoked(*revocations: Revocation) -> RevokedServices:
    copy = RevokedServices()
    copy.replace(revocations)
    return copy


def test_a_client_a_service_and_a_token_are_refused_with_their_reasons() -> None:
    copy = revoked(Revocation("client_id", "billing", 100.0), Revocation("jti", "jti-2", 100.0, 2000.0))
    assert copy.refusal(BILLING, 1000.0) == "service-revoked"
    assert copy.refusal(WORKLOAD, 1000.0) == "token-revoked"
    assert revoked(Revocation("service", WORKLOAD.subject, 1.0)).refusal(WORKLOAD, 1000.0) == "service-revoked"
    assert revoked(Revocation("service", WORKLOAD.subject, 1.0)).refusal(BILLING, 1000.0) is None


def test_a_token_revocation_ends_with_its_expiry() -> None:
    copy = revoked(Revocation("jti", "jti-1", 100.0, 2000.0))
    assert copy.refusal(BILLING, 1999.0) == "token-revoked"
    assert copy.refusal(BILLING, 2000.0) is None


def test_nothing_is_vouched_for_before_the_table_was_read() -> None:
    with pytest.raises(TokenServiceUnavailable):
        RevokedServices().refusal(BILLING, 0.0)
    assert revoked().refusal(BILLING, 0.0) is None


def test_an_announcement_adds_a_revocation_and_nothing_else() -> None:
    assert _announced(b'{"t": 1}') is None
    assert _announced(b"not json") is None
    assert _announced(b'{"entry": "lift:billing", "value": "{}"}') is None
    found = _announced(b'{"entry": "client_id:billing", "value": "{\\"revoked_at\\": 5, \\"expires_at\\": null}"}')
    assert found == Revocation("client_id", "billing", 5.0, None)


async def test_revoke_list_and_lift_through_the_store() -> None:
    store = MemoryStore(SessionsConfig())
    revocations = ServiceRevocations(store, poll_every=1.0)
    await revocations.reload()
    await revocations.revoke(Revocation("client_id", "billing", 10.0), 10.0)
    assert revocations.revoked.refusal(BILLING, 11.0) == "service-revoked"  # this process's copy at once
    assert [r.value for r in await revocations.listed()] == ["billing"]
    with pytest.raises(ValueError):
        await revocations.revoke(Revocation("jti", "old", 10.0, 5.0), 10.0)  # expired already
    assert await revocations.lift("client_id", "billing") is True
    assert await revocations.lift("client_id", "billing") is False
    assert revocations.revoked.refusal(BILLING, 12.0) is None
    await store.close()
