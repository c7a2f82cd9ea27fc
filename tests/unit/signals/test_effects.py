"""The effects of security signals on a worker's sessions and devices: pure, no store."""

from __future__ import annotations

from tests.unit.test_metrics import changes, scrape
from ztproxy.config.identity import IdentityProviderConfig, MfaConfig
from ztproxy.policy.model import Device
from ztproxy.policy.reasons import DEVICE_NOT_COMPLIANT, MFA_REQUIRED
from ztproxy.sessions.model import Session
from ztproxy.signals.effects import CLAIMS, MFA, Effect, SignalEffects, account_entry, device_entry

PROVIDER = IdentityProviderConfig(name="corp", issuer="https://idp.corp.example", client_id="ztproxy",
                                  client_secret="s", mfa=MfaConfig(acr_values=("urn:corp:mfa",)))


def session(*, created: float = 100.0, refreshed: float = 100.0) -> Session:
    return Session(provider="corp", subject="u-1", email="Alice@corp.example", name="Alice", groups=("employees",),
                   claims={"department": "it"}, acr="urn:corp:mfa", amr=("pwd", "otp"), mfa=True,
                   auth_time=created, created=created, last_seen=created, refreshed=refreshed, idp_session="sid-9")


def effects(*found: Effect) -> SignalEffects:
    view = SignalEffects([PROVIDER])
    view.replace({effect.entry: effect.to_bytes() for effect in found})
    return view


def test_mfa_is_lost_by_sessions_begun_before_the_event_was_accepted() -> None:
    lost = Effect(account_entry(MFA, "corp", "sub:u-1"), happened=140.0, accepted=150.0)
    view = effects(lost)
    adjusted, applied = view.adjust(session(created=100.0))
    assert (adjusted.mfa, adjusted.acr, adjusted.amr) == (False, None, ("pwd",)) and applied == (lost,)
    assert adjusted.identity.mfa is False
    # A sign-in after it (the step-up) has MFA again.
    fresh, applied = view.adjust(session(created=160.0))
    assert fresh.mfa is True and applied == ()


def test_effects_match_by_email_case_insensitively_and_by_idp_session() -> None:
    by_email = effects(Effect(account_entry(MFA, "corp", "email:alice@CORP.example"), 1.0, 150.0))
    assert by_email.adjust(session())[0].mfa is False
    by_sid = effects(Effect(account_entry(MFA, "corp", "sid:sid-9"), 1.0, 150.0))
    assert by_sid.adjust(session())[0].mfa is False
    other_provider = effects(Effect(account_entry(MFA, "other", "sub:u-1"), 1.0, 150.0))
    assert other_provider.adjust(session())[0].mfa is True


def test_claims_apply_until_the_next_refresh_and_groups_follow_the_groups_claim() -> None:
    changed = Effect(account_entry(CLAIMS, "corp", "sub:u-1"), 1.0, 150.0, {"groups": ["payroll"], "level": 3})
    view = effects(changed)
    adjusted, applied = view.adjust(session(refreshed=120.0))
    assert adjusted.groups == ("payroll",) and adjusted.claims["level"] == 3 and adjusted.claims["department"] == "it"
    assert "payroll" in adjusted.identity.groups and applied == (changed,)
    assert view.adjust(session(refreshed=151.0))[0].groups == ("employees",)  # the IdP has told it since


def test_a_device_not_compliant_fails_and_the_refusal_is_timed_once() -> None:
    view = effects(Effect(device_entry("laptop-7"), 1.0, 10.0))
    assert view.device(Device(id="laptop-7", managed=True)).compliant is False
    assert view.device(Device(id="laptop-8", managed=True)).compliant is True
    before = scrape()
    refused = view.device(Device(id="laptop-7"))
    view.refused((), refused, (DEVICE_NOT_COMPLIANT,), 10.5)
    view.refused((), refused, (DEVICE_NOT_COMPLIANT,), 11.5)
    assert changes(before, scrape())("ztproxy_signal_enforcement_seconds_count",
                                     event="device-compliance-change") == 1


def test_an_mfa_effect_is_timed_only_by_a_refusal_for_mfa() -> None:
    lost = Effect(account_entry(MFA, "corp", "sub:u-1"), 1.0, 20.0)
    view = effects(lost)
    before = scrape()
    view.refused((lost,), None, ("group-missing",), 21.0)
    view.refused((lost,), None, (MFA_REQUIRED,), 21.0)
    assert changes(before, scrape())("ztproxy_signal_enforcement_seconds_count",
                                     event="assurance-level-change") == 1


def test_announcements_add_and_listeners_hear_every_change() -> None:
    view = effects()
    heard: list[int] = []
    stop = view.listen(lambda: heard.append(1))
    assert not view.active
    entry = device_entry("laptop-7")
    view.add(entry, Effect(entry, 1.0, 2.0).to_bytes())
    view.add(entry, Effect(entry, 1.0, 2.0).to_bytes())  # the same again: no change
    view.add("unknown:x", b"{}")
    view.add(entry + "x", b"not json")
    assert view.active and heard == [1]
    view.replace({})
    stop()
    view.add(entry, Effect(entry, 1.0, 2.0).to_bytes())
    assert heard == [1, 1]
