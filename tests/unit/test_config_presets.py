"""Identity provider presets: the defaults they fill in, what set explicitly wins, their checks."""

from __future__ import annotations

from textwrap import dedent
from typing import Any

import pytest

from ztproxy.config import load_text
from ztproxy.config.identity import IdentityProviderConfig
from ztproxy.config.presets import GENERIC, PRESETS, Preset, preset_of, resolve_preset
from ztproxy.config.presets.entra import EntraOptions, needs_graph
from ztproxy.errors import ConfigError

TENANT = "3f1c0a52-1d2e-4b7a-9c3e-0123456789ab"
ROUTES = """
routes:
  - {name: app, upstream: 'http://127.0.0.1:1', allow: [{email_domains: [corp.example]}]}
"""


def provider(entry: str) -> IdentityProviderConfig:
    return load_text(f"identity_providers:\n  - {entry}\n{ROUTES}", env={}).identity_providers[0]


def issues(entry: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(dedent(f"identity_providers:\n  - {entry}\n{ROUTES}"), env={})
    return [f"{issue.path}: {issue.message}" for issue in caught.value.issues]


def test_every_registered_preset_resolves() -> None:
    for name in PRESETS:
        assert resolve_preset(name).name == name


def test_without_a_preset_the_provider_is_the_generic_one() -> None:
    config = provider("{issuer: 'https://idp.corp.example/', client_id: z}")
    assert preset_of(config) is GENERIC
    assert config.issuer == "https://idp.corp.example"  # a trailing slash is dropped, as always
    assert config.scopes == ("openid", "email", "profile")


def test_an_unknown_preset_is_an_error_at_its_key() -> None:
    [found] = issues("{issuer: 'https://idp', client_id: z, preset: entr}")
    assert found.startswith("identity_providers[0].preset: unknown preset 'entr'")


def test_a_preset_of_ones_own_by_import_string() -> None:
    config = provider("{issuer: 'https://idp', client_id: z, preset: 'tests.unit.test_config_presets:CUSTOM'}")
    assert config.scopes == ("openid", "custom")
    [found] = issues("{issuer: 'https://idp', client_id: z, preset: 'tests.unit.test_config_presets:NOT_A_PRESET'}")
    assert "is not a ztproxy.config.presets.Preset" in found


CUSTOM = Preset(name="custom", defaults=lambda _: {"scopes": ["openid", "custom"]})
NOT_A_PRESET = object()


# --- entra -------------------------------------------------------------------------------------

def test_entra_builds_the_issuer_from_the_tenant_and_fills_its_defaults() -> None:
    config = provider(f"{{preset: entra, entra: {{tenant: {TENANT}}}, client_id: z}}")
    assert config.issuer == f"https://login.microsoftonline.com/{TENANT}/v2.0"
    assert config.scopes == ("openid", "email", "profile", "offline_access", "User.Read")
    assert config.mfa.acr_values == () and config.mfa.accepted_amr == ("mfa",)
    assert config.entra is not None and config.entra.group_names == "ids"
    assert config.entra.graph_url == "https://graph.microsoft.com"


def test_entra_names_need_the_permission_to_read_groups() -> None:
    config = provider(f"{{preset: entra, entra: {{tenant: {TENANT}, group_names: display_names}}, client_id: z}}")
    assert "GroupMember.Read.All" in config.scopes


def test_what_is_set_explicitly_wins_over_the_preset() -> None:
    config = provider(f"{{preset: entra, entra: {{tenant: {TENANT}}}, client_id: z, scopes: [openid, email], "
                      "mfa: {accepted_amr: [mfa, ngcmfa]}, groups_claim: roles}")
    assert config.scopes == ("openid", "email")
    assert config.groups_claim == "roles"
    assert config.mfa.accepted_amr == ("mfa", "ngcmfa")
    assert config.mfa.acr_values == ()  # the rest of the preset's mfa stays


@pytest.mark.parametrize("tenant", ["common", "organizations", "consumers", "Common"])
def test_entra_refuses_the_multi_tenant_endpoints(tenant: str) -> None:
    [found] = issues(f"{{preset: entra, entra: {{tenant: {tenant}}}, client_id: z}}")
    assert found.startswith("identity_providers[0].entra.tenant: the multi-tenant")
    [found] = issues(f"{{preset: entra, issuer: 'https://login.microsoftonline.com/{tenant}/v2.0', client_id: z}}")
    assert found.startswith("identity_providers[0].issuer: the multi-tenant")


def test_entra_issuer_shapes() -> None:
    [found] = issues("{preset: entra, entra: {tenant: contoso.onmicrosoft.com}, client_id: z}")
    assert found.startswith("identity_providers[0].entra.tenant: 'contoso.onmicrosoft.com' is not a tenant id")
    [found] = issues(f"{{preset: entra, issuer: 'https://sts.windows.net/{TENANT}/', client_id: z}}")
    assert found.startswith("identity_providers[0].issuer:") and "v2.0" in found
    other = TENANT.replace("3f", "4f")
    [found] = issues(f"{{preset: entra, entra: {{tenant: {TENANT}}}, "
                     f"issuer: 'https://login.microsoftonline.com/{other}/v2.0', client_id: z}}")
    assert found.startswith("identity_providers[0].issuer: the issuer names tenant")


def test_entra_with_neither_tenant_nor_issuer() -> None:
    assert issues("{preset: entra, client_id: z}") == ["identity_providers[0]: missing required key 'issuer'"]


def test_entra_reads_graph_on_overage_for_names_and_at_every_refresh() -> None:
    ids, names = EntraOptions(), EntraOptions(group_names="display_names")
    overage = {"sub": "u", "_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": "x"}}}
    assert needs_graph(ids, overage)
    assert not needs_graph(ids, {"sub": "u", "groups": ["g1"]})
    assert not needs_graph(ids, {"sub": "u"})  # no groups at all: nothing to read
    assert needs_graph(names, {"sub": "u", "groups": ["g1"]})
    assert needs_graph(ids, None)  # a refresh: Entra's userinfo has no groups


# --- google ------------------------------------------------------------------------------------

def test_google_fills_the_issuer_and_requires_a_hosted_domain() -> None:
    config = provider("{preset: google, google: {hosted_domain: Corp.Example}, client_id: z}")
    assert config.issuer == "https://accounts.google.com"
    preset = preset_of(config)
    assert preset.authorization_parameters(config) == {"hd": "corp.example", "access_type": "offline"}
    [found] = issues("{preset: google, client_id: z}")
    assert found.startswith("identity_providers[0].google: preset google needs google.hosted_domain")


@pytest.mark.parametrize(("claims", "reason"), [({"hd": "corp.example"}, None), ({"hd": "CORP.example"}, None),
                                                ({}, "hd-missing"), ({"hd": "other.example"}, "hd-mismatch"),
                                                ({"hd": ["corp.example"]}, "hd-mismatch")])
def test_google_refuses_an_id_token_of_another_domain(claims: dict[str, Any], reason: str | None) -> None:
    config = provider("{preset: google, google: {hosted_domain: corp.example}, client_id: z}")
    refusal = preset_of(config).refusal(config, {"sub": "u", **claims})
    assert (refusal.reason if refusal else None) == reason


def test_options_of_a_preset_not_chosen_are_an_error() -> None:
    [found] = issues("{issuer: 'https://idp', client_id: z, google: {hosted_domain: corp.example}}")
    assert found.startswith("identity_providers[0].google: google holds the options of preset google")
    found = issues(f"{{preset: okta, issuer: 'https://o.okta.com', client_id: z, entra: {{tenant: {TENANT}}}}}")
    assert found[0].startswith("identity_providers[0].entra:")


# --- okta, keycloak, auth0, gitlab, lemonldap ---------------------------------------------------

def test_okta_org_and_custom_authorization_servers() -> None:
    org = provider("{preset: okta, issuer: 'https://corp.okta.com', client_id: z}")
    assert "groups" in org.scopes and org.mfa.acr_values == ("urn:okta:loa:2fa:any",)
    custom = provider("{preset: okta, issuer: 'https://corp.okta.com/oauth2/default', client_id: z}")
    assert "groups" not in custom.scopes  # a custom server defines its groups claim instead
    # Okta's sign-out takes the ID token back (id_token_hint): sessions keep it, unless told otherwise.
    assert org.logout_id_token_hint and custom.logout_id_token_hint
    assert not provider("{preset: okta, issuer: 'https://corp.okta.com', client_id: z, "
                        "logout_id_token_hint: false}").logout_id_token_hint
    assert not provider("{preset: keycloak, issuer: 'https://sso.corp.example/realms/corp', client_id: z}"
                        ).logout_id_token_hint
    for bad in ("https://corp.okta.com/oauth2/v1", "https://corp.okta.com/oauth2/default/v1/token",
                "https://corp.okta.com/x"):
        [found] = issues(f"{{preset: okta, issuer: '{bad}', client_id: z}}")
        assert found.startswith("identity_providers[0].issuer:") and "not an Okta issuer" in found


def test_keycloak_issuer_is_a_realm() -> None:
    for good in ("https://sso.corp.example/realms/corp", "https://sso.corp.example/auth/realms/corp"):
        assert provider(f"{{preset: keycloak, issuer: '{good}', client_id: z}}").groups_claim == "groups"
    for bad in ("https://sso.corp.example", "https://sso.corp.example/realms/corp/protocol/openid-connect"):
        [found] = issues(f"{{preset: keycloak, issuer: '{bad}', client_id: z}}")
        assert found.startswith("identity_providers[0].issuer:") and "realm" in found


def test_auth0_keeps_the_issuer_slash_and_needs_a_groups_claim() -> None:
    config = provider("{preset: auth0, issuer: 'https://corp.eu.auth0.com/', client_id: z, "
                      "groups_claim: 'https://corp.example/groups'}")
    assert config.issuer == "https://corp.eu.auth0.com/"
    assert config.mfa.accepted_amr == ("mfa",) and "offline_access" in config.scopes
    found = issues("{preset: auth0, issuer: 'https://corp.eu.auth0.com', client_id: z}")
    assert [issue.split(":")[0] for issue in found] == ["identity_providers[0].groups_claim",
                                                        "identity_providers[0].issuer"]
    assert "trailing slash" in found[1]


def test_gitlab_reads_groups_from_userinfo() -> None:
    config = provider("{preset: gitlab, issuer: 'https://gitlab.com', client_id: z}")
    assert config.use_userinfo and config.groups_claim == "groups"
    [found] = issues("{preset: gitlab, issuer: 'https://gitlab.com', client_id: z, use_userinfo: false}")
    assert found.startswith("identity_providers[0].use_userinfo:")
    provider("{preset: gitlab, issuer: 'https://gitlab.com', client_id: z, use_userinfo: false, "
             "groups_claim: groups_direct}")


def test_lemonldap_posts_the_client_secret_unless_told_otherwise() -> None:
    config = provider("{preset: lemonldap, issuer: 'https://auth.corp.example', client_id: z, client_secret: s}")
    assert config.token_endpoint_auth_method == "client_secret_post"
    explicit = provider("{preset: lemonldap, issuer: 'https://auth.corp.example', client_id: z, client_secret: s, "
                        "token_endpoint_auth_method: client_secret_basic}")
    assert explicit.token_endpoint_auth_method == "client_secret_basic"


def test_every_problem_of_every_provider_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(dedent("""
            identity_providers:
              - {name: a, preset: entra, entra: {tenant: common}, client_id: z}
              - {name: b, preset: keycloak, issuer: 'https://kc.corp.example', client_id: z}
              - {name: c, preset: google, client_id: z}
            """) + ROUTES, env={})
    assert [issue.path for issue in caught.value.issues] == [
        "identity_providers[0].entra.tenant", "identity_providers[1].issuer", "identity_providers[2].google"]
