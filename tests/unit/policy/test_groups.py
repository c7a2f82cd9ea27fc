"""``groups``: a list (any of) or ``{any_of, all_of}``."""

from __future__ import annotations

from tests.unit.policy.helpers import facts, reasons, user
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, GROUP_MISSING

MEMBER = facts(identity=user(groups=frozenset({"staff", "eng"})))


def test_list_means_any_of() -> None:
    assert reasons({"groups": ["admins", "eng"]}, MEMBER) == ()
    assert reasons({"groups": ["admins"]}, MEMBER) == (GROUP_MISSING,)


def test_all_of_needs_every_group() -> None:
    assert reasons({"groups": {"all_of": ["staff", "eng"]}}, MEMBER) == ()
    assert reasons({"groups": {"all_of": ["staff", "admins"]}}, MEMBER) == (GROUP_MISSING,)


def test_any_of_and_all_of_together() -> None:
    assert reasons({"groups": {"any_of": ["eng", "ops"], "all_of": ["staff"]}}, MEMBER) == ()
    assert reasons({"groups": {"any_of": ["ops"], "all_of": ["staff"]}}, MEMBER) == (GROUP_MISSING,)


def test_names_are_compared_exactly() -> None:
    assert reasons({"groups": ["Staff"]}, MEMBER) == (GROUP_MISSING,)


def test_no_groups_and_no_identity() -> None:
    assert reasons({"groups": ["staff"]}, facts(identity=user(groups=frozenset()))) == (GROUP_MISSING,)
    assert reasons({"groups": ["staff"]}, facts(identity=None)) == (AUTHENTICATION_REQUIRED,)
