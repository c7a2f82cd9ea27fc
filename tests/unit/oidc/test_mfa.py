"""is_mfa: an accepted acr or amr value means a second factor; nothing means one factor."""

from __future__ import annotations

from ztproxy.config.identity import MfaConfig
from ztproxy.oidc.tokens import is_mfa

CORP = MfaConfig(acr_values=("urn:corp:mfa",), accepted_amr=("otp", "hwk"))


def test_a_requested_acr_means_mfa() -> None:
    assert is_mfa("urn:corp:mfa", (), CORP)


def test_accepted_acr_replaces_the_requested_ones() -> None:
    config = MfaConfig(acr_values=("urn:corp:mfa",), accepted_acr=("urn:corp:strong",), accepted_amr=())
    assert is_mfa("urn:corp:strong", (), config)
    assert not is_mfa("urn:corp:mfa", (), config)


def test_another_acr_is_not_mfa() -> None:
    assert not is_mfa("urn:corp:password", ("pwd",), CORP)
    assert not is_mfa("0", (), CORP)


def test_an_accepted_amr_value_means_mfa() -> None:
    assert is_mfa(None, ("pwd", "otp"), CORP)
    assert is_mfa(None, ["hwk"], CORP)


def test_the_default_amr_values_are_rfc_8176_second_factors() -> None:
    assert is_mfa(None, ("pwd", "mfa"), MfaConfig())
    assert is_mfa(None, ("webauthn",), MfaConfig())
    assert not is_mfa(None, ("pwd",), MfaConfig())


def test_no_acr_and_no_amr_is_single_factor() -> None:
    assert not is_mfa(None, (), CORP)
    assert not is_mfa(None, (), MfaConfig())


def test_without_acr_values_no_acr_counts() -> None:
    assert not is_mfa("urn:corp:mfa", (), MfaConfig(accepted_amr=()))


def test_a_lone_string_is_one_method_not_its_letters() -> None:
    letters = MfaConfig(accepted_amr=("o", "t", "p"))
    assert not is_mfa(None, "otp", letters)
    assert is_mfa(None, "otp", CORP)
