"""The rule keys in a configuration file: what loads, and what is refused with which message."""

from __future__ import annotations

import textwrap

import pytest

from ztproxy.config import load_text
from ztproxy.config.rules import DeviceRequirement, GroupsRequirement, Rule, TimeWindow
from ztproxy.errors import ConfigError


def route(rules: str, deny: str = "") -> str:
    head = textwrap.dedent("""\
        policies:
          staff: [{email_domains: [corp.example]}]
        routes:
          - name: app
            upstream: 'http://127.0.0.1:1'
            allow:
        """)
    text = head + textwrap.indent(textwrap.dedent(rules), "      ")
    if deny:
        text += "    deny:\n" + textwrap.indent(textwrap.dedent(deny), "      ")
    return text


def issues(rules: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_text(route(rules), env={})
    return [(issue.path, issue.message) for issue in caught.value.issues]


def test_every_key_loads_and_is_normalised() -> None:
    config = load_text(route("""\
        - users: [u-1, Ada@Corp.Example]
          email_domains: [Corp.Example.]
          groups: {any_of: [eng], all_of: [staff]}
          claims: {dept: sales, level: [2, 3], verified: true}
          mfa: true
          max_auth_age: 15m
          max_session_age: 12h
          device:
            managed: true
            disk_encrypted: true
            min_os_version: {macOS: "14.2", windows: 10}
            max_posture_age: 10m
            min_score: 70
            owner_is_user: true
        - methods: [get, Head]
          paths: [/api, /static/]
          source_cidrs: [10.0.0.1/8, "2001:db8::/32"]
          time_window: {days: [mon, FRI], start: "09:00", end: "06:00", timezone: Europe/Paris}
        - public: true
          methods: [GET]
        """, deny="""\
        - staff
        - {source_cidrs: [192.0.2.0/24]}
        """), env={})
    (app,) = config.routes
    identity_rule, request_rule, public_rule = app.allow
    assert identity_rule.users == ("u-1", "Ada@Corp.Example")
    assert identity_rule.email_domains == ("corp.example",)
    assert identity_rule.groups == GroupsRequirement(any_of=("eng",), all_of=("staff",))
    assert identity_rule.claims == {"dept": ("sales",), "level": (2, 3), "verified": (True,)}
    assert (identity_rule.max_auth_age, identity_rule.max_session_age) == (900.0, 43200.0)
    assert identity_rule.device == DeviceRequirement(managed=True, disk_encrypted=True,
                                                     min_os_version={"macos": "14.2", "windows": "10"},
                                                     max_posture_age=600.0, min_score=70, owner_is_user=True)
    assert request_rule.methods == ("GET", "HEAD")
    assert request_rule.source_cidrs == ("10.0.0.0/8", "2001:db8::/32")
    assert request_rule.time_window == TimeWindow(days=("mon", "fri"), start="09:00", end="06:00",
                                                  timezone="Europe/Paris")
    assert public_rule == Rule(public=True, methods=("GET",))
    assert app.deny == (Rule(policy="staff"), Rule(source_cidrs=("192.0.2.0/24",)))


def test_groups_list_is_any_of() -> None:
    assert Rule.model_validate({"groups": ["a", "b"]}).groups == GroupsRequirement(any_of=("a", "b"))


def test_deny_defaults_to_nothing() -> None:
    assert load_text(route("- public: true\n"), env={}).routes[0].deny == ()


@pytest.mark.parametrize(("rule", "path", "message"), [
    ("- source_cidrs: [10.0.0.300/8]", "source_cidrs[0]", "invalid CIDR '10.0.0.300/8'"),
    ("- time_window: {start: '25:00', end: '10:00'}", "time_window.start", "invalid time '25:00'"),
    ("- time_window: {start: '9:00', end: '10:00'}", "time_window.start", "invalid time '9:00'"),
    ("- time_window: {start: 17:30, end: '10:00'}", "time_window.start", "write times in quotes"),
    ("- time_window: {start: '09:00', end: '09:00'}", "time_window", "start and end are the same"),
    ("- time_window: {start: '09:00', end: '10:00', timezone: Mars/Base}", "time_window.timezone",
     "unknown time zone 'Mars/Base'"),
    ("- time_window: {start: '09:00', end: '10:00', days: [moonday]}", "time_window.days[0]", "invalid day"),
    ("- time_window: {start: '09:00', end: '10:00', days: []}", "time_window.days", "needs at least 1 entry"),
    ("- {public: true, groups: [admins]}", "", "cannot be combined with groups"),
    ("- {public: true, device: {managed: true}}", "", "cannot be combined with device"),
    ("- {policy: staff, mfa: true}", "", "a policy reference stands alone"),
    ("- {mfa: false}", "", "an allow rule needs at least one criterion"),
    ("- users: []", "users", "needs at least 1 entry"),
    ("- email_domains: ['@corp.example']", "email_domains[0]", "invalid email domain"),
    ("- groups: {any_of: []}", "groups", "name at least one group"),
    ("- claims: {}", "claims", "needs at least 1 entry"),
    ("- claims: {level: 1.5}", "claims.level.0", "expected a string, a whole number or true/false"),
    ("- max_auth_age: 0s", "max_auth_age", "must be longer than 0s"),
    ("- max_session_age: soon", "max_session_age", "invalid duration"),
    ("- device: {}", "device", "a device requirement needs at least one condition"),
    ("- device: {min_score: 101}", "device.min_score", "less than or equal to 100"),
    ("- device: {min_os_version: {macos: 14.10}}", "device.min_os_version.macos", "write versions in quotes"),
    ("- device: {min_os_version: {macos: 14.x}}", "device.min_os_version.macos", "invalid version"),
    ("- device: {jailbroken: false}", "device.jailbroken", "unknown key"),
    ("- methods: ['GE T']", "methods[0]", "invalid HTTP method"),
    ("- paths: [/a/../b]", "paths[0]", "invalid path prefix"),
    ("- paths: [api]", "paths[0]", "invalid path prefix"),
])
def test_invalid_rules(rule: str, path: str, message: str) -> None:
    found = issues(rule)
    assert len(found) == 1, found
    where = "routes[0].allow[0]" + ("." + path if path and not path.startswith("[") else path)
    assert found[0][0] == where
    assert message in found[0][1]


def test_deny_rules_are_validated_like_allow_rules() -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(route("- public: true\n", deny="- {}\n"), env={})
    assert [issue.path for issue in caught.value.issues] == ["routes[0].deny[0]"]


def test_unknown_policy_in_deny_is_a_config_error() -> None:
    import pytest

    from ztproxy.config import load_text
    from ztproxy.errors import ConfigError

    text = """
policies:
  contractors: [{public: true}]
routes:
  - name: app
    upstream: http://127.0.0.1:9
    allow: [{public: true}]
    deny: [contractor]
"""
    with pytest.raises(ConfigError) as error:
        load_text(text)
    assert [(i.path, i.line) for i in error.value.issues] == [("routes[0].deny[0]", 8)]
    assert "unknown policy 'contractor' (did you mean 'contractors'?)" in error.value.issues[0].message
