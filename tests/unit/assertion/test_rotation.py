"""Rotation across replicas: two key rings over one directory sign and publish alike.

Each phase puts the keys' creation times where the real clock (which verifiers check
exp against) falls in that phase; the replicas never talk to each other.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from joserfc import jws

from ztproxy.assertion import AssertionSigner
from ztproxy.assertion.keys import KeyRing, RotationPolicy, generate_key, prune, write_key
from ztproxy.policy.model import Identity
from ztproxy.verify import AssertionInvalid, Verifier

ISSUER = "https://proxy.corp.example"
WIKI = "https://wiki.corp.example"
TTL, PUBLISH, LEEWAY = 60, 600, 30
POLICY = RotationPolicy(ttl=TTL, publish_before_use=PUBLISH, verifier_leeway=LEEWAY)
ALICE = Identity(subject="u-1", groups=frozenset({"staff"}))


def kid(token: str) -> str:
    return str(jws.extract_compact(token.encode()).headers()["kid"])


def replicas(directory: Path, now: float) -> tuple[AssertionSigner, AssertionSigner]:
    return tuple(AssertionSigner(KeyRing(POLICY, now=now, keys_dir=str(directory)), issuer=ISSUER)  # type: ignore[return-value]
                 for _ in range(2))


def sign(signer: AssertionSigner, now: float, session: str = "pub-1") -> str:
    return signer.assertion(session=session, route="wiki", audience=WIKI, identity=ALICE, device=None, now=now)


def verify(signer: AssertionSigner, now: float, token: str) -> str:
    """Verify as an app would, with the JWKS this replica publishes at ``now``."""
    return Verifier(issuer=ISSUER, audience=WIKI, jwks=signer.keyring.jwks(now)).verify(token).subject


# new key created this long before now -> (who signs now, is the old key published)
PHASES = {
    "new-pending": (60, "old", True),
    "new-signing-old-retiring": (PUBLISH + 5, "new", True),
    "old-retiring-last-seconds": (PUBLISH + TTL + LEEWAY - 5, "new", True),
    "old-expired": (PUBLISH + TTL + LEEWAY + 5, "new", False),
}


@pytest.mark.parametrize("phase", PHASES)
def test_every_phase_of_a_rotation(tmp_path: Path, phase: str) -> None:
    now = time.time()
    new_age, signer_name, old_published = PHASES[phase]
    old, new = generate_key(now - 86400), generate_key(now - new_age)
    write_key(tmp_path, old)
    write_key(tmp_path, new)
    expected = {"old": old.kid, "new": new.kid}[signer_name]
    a, b = replicas(tmp_path, now)

    # Both replicas sign with the same key and publish the same document.
    assert kid(sign(a, now)) == kid(sign(b, now, "pub-2")) == expected
    assert a.keyring.jwks_document(now)[:2] == b.keyring.jwks_document(now)[:2]
    published = {key["kid"] for key in b.keyring.jwks(now)["keys"]}
    assert published == ({old.kid, new.kid} if old_published else {new.kid})

    # A token from one replica verifies against the other's JWKS, now...
    assert verify(b, now, sign(a, now)) == "u-1"
    # ...and so does one signed just before the switch, by the old key, while it lives.
    switch = new.created + PUBLISH
    if switch <= now:
        before = sign(a, switch - 1)
        assert kid(before) == old.kid
        if old_published:
            assert verify(b, now, before) == "u-1"  # exp + leeway not passed yet
        else:
            with pytest.raises(AssertionInvalid):
                verify(b, now, before)

    # Pruning removes a key only once nothing it signed can still be accepted.
    removed = prune(tmp_path, POLICY, now)
    assert [key.kid for key in removed] == ([] if old_published else [old.kid])
    assert verify(a, now, sign(b, now, "pub-3")) == "u-1"


def test_a_rotation_as_time_passes_seen_by_two_replicas(tmp_path: Path) -> None:
    """The same directory over a simulated hour (verification here ignores the real clock)."""
    start = 1_800_000_000
    old = generate_key(start - 86400)
    write_key(tmp_path, old)
    a = KeyRing(POLICY, now=start, keys_dir=str(tmp_path), reload_interval=5)
    b = KeyRing(POLICY, now=start, keys_dir=str(tmp_path), reload_interval=5)
    new = generate_key(start + 100)
    timeline = []
    for now in range(start, start + 3600, 5):
        assert a.signing_key(now).kid == b.signing_key(now).kid
        assert a.jwks_document(now)[1] == b.jwks_document(now)[1]
        signer = "old" if a.signing_key(now).kid == old.kid else "new"
        published = sorted("old" if k["kid"] == old.kid else "new" for k in a.jwks(now)["keys"])
        if not timeline or timeline[-1][1:] != (signer, published):
            timeline.append((now - start, signer, published))
        if now == start + 100:
            write_key(tmp_path, new)  # `ztproxy keys rotate` on one host
    assert timeline == [
        (0, "old", ["old"]),
        (105, "old", ["new", "old"]),  # read within the reload interval, published, not signing
        (100 + PUBLISH, "new", ["new", "old"]),
        (100 + PUBLISH + TTL + LEEWAY, "new", ["new"]),
    ]
