"""The index names: short ones written, the release before's read (their spelling must not drift)."""

from __future__ import annotations

import hashlib

from tests.unit.test_session_manager import make_session
from ztproxy.sessions.indexes import (
    email_index,
    handle_bucket,
    idp_session_index,
    legacy_email_index,
    legacy_handle_index,
    legacy_idp_session_index,
    legacy_user_index,
    lookups,
    shared_indexes,
    user_index,
    written_indexes,
)
from ztproxy.sessions.sealing import Ticket


def test_the_names_written_fit_redis_smallest_key_allocation_and_keep_kinds_apart() -> None:
    names = [user_index("corp", "alice"), email_index("corp", "alice@corp.example"),
             idp_session_index("corp", "op-sid-1")]
    # 28 characters: with Redis's 4 bytes of string header and end, jemalloc's 32-byte class.
    assert [len(name) for name in names] == [28, 28, 28]
    assert [name[:6] for name in names] == ["idx:u:", "idx:e:", "idx:i:"]
    assert user_index("corp", "alice") != user_index("corp", "alice2") != user_index("other", "alice")
    assert email_index("corp", "Alice@Corp.Example") == email_index("corp", "alice@corp.example")
    # The same provider and value under another kind is another index.
    assert len({user_index("corp", "x"), email_index("corp", "x"), idp_session_index("corp", "x")}) == 3


def test_the_release_before_names_are_spelled_as_it_wrote_them() -> None:
    def hexdigest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    assert legacy_user_index("corp", "alice") == "idx:user:" + hexdigest("corp\0alice")
    assert legacy_email_index("corp", "Alice@corp.example") == "idx:email:" + hexdigest("corp\0alice@corp.example")
    assert legacy_idp_session_index("corp", "op-sid-1") == "idx:sid:" + hexdigest("corp\0op-sid-1")
    assert legacy_handle_index("0123456789abcdef") == "idx:handle:0123456789abcdef"


def test_a_session_is_written_under_the_short_names_and_looked_up_under_both() -> None:
    session, ticket = make_session(), Ticket.new()
    assert written_indexes(ticket.store_key, session) == [
        user_index("corp", "alice"), idp_session_index("corp", "op-sid-1"), email_index("corp", "alice@corp.example"),
        handle_bucket(ticket.public_id)]
    assert shared_indexes(session.replace(email=None, idp_session=None)) == [user_index("corp", "alice")]
    assert shared_indexes(session, legacy=True) == [
        legacy_user_index("corp", "alice"), legacy_idp_session_index("corp", "op-sid-1"),
        legacy_email_index("corp", "alice@corp.example")]
    assert lookups("corp", subject="alice") == [user_index("corp", "alice"), legacy_user_index("corp", "alice")]
    assert lookups("corp", email="a@b") == [email_index("corp", "a@b"), legacy_email_index("corp", "a@b")]
    # The IdP session first: a logout token may carry both (OIDC Back-Channel Logout 1.0 2.4).
    assert lookups("corp", subject="alice", idp_session="s") == [idp_session_index("corp", "s"),
                                                                 legacy_idp_session_index("corp", "s")]
    assert lookups("corp") == []
