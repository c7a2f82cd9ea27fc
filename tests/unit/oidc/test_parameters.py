"""Repeated parameters in a message from the IdP (RFC 6749 3.1)."""

from __future__ import annotations

import pytest
from multidict import MultiDict
from yarl import URL

from ztproxy.oidc.parameters import repeated

NAMES = ("code", "state", "iss")


def query(raw: str) -> MultiDict[str]:
    # As aiohttp's request.query decodes it, percent-escapes in names included.
    return MultiDict(URL("/.ztproxy/callback?" + raw, encoded=True).query)


def test_single_copies_pass() -> None:
    assert repeated(query("code=c&state=s&iss=https%3A%2F%2Fidp"), NAMES) is None
    assert repeated(query(""), NAMES) is None


@pytest.mark.parametrize("raw", ["code=forged&code=c&state=s", "state=s&code=c&code=forged",
                                 "code=c&state=s&iss=i&code=c", "code=&code=c", "code&code"])
def test_a_repeated_parameter_is_named_whatever_the_order_or_value(raw: str) -> None:
    assert repeated(query(raw), NAMES) == "code"


def test_an_escaped_name_is_the_same_name() -> None:
    assert repeated(query("state=s&st%61te=forged"), NAMES) == "state"


def test_the_first_listed_name_is_named_when_several_repeat() -> None:
    assert repeated(query("iss=a&iss=b&state=a&state=b"), NAMES) == "state"


def test_names_not_asked_about_may_repeat() -> None:
    # Whether an unknown extension parameter may repeat is not for this check to say.
    assert repeated(query("code=c&scope=a&scope=b&Code=x"), NAMES) is None


def test_form_values_of_any_type_count() -> None:
    form: MultiDict[str | bytes] = MultiDict([("logout_token", "a.b.c"), ("logout_token", b"d.e.f")])
    assert repeated(form, ("logout_token",)) == "logout_token"
