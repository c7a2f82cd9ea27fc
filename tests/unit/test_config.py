"""Loading and validating configuration: values, defaults, and every kind of error with path and line."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import get_args

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from ztproxy.config import Config, RouteConfig, Rule, load, load_text
from ztproxy.config.source import MAX_NODES, substitute
from ztproxy.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

MINIMAL = "routes:\n  - {name: app, upstream: 'http://127.0.0.1:8001', allow: [{public: true}]}\n"


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def issues(text: str, env: Mapping[str, str] | None = None) -> list[tuple[str, str, int | None]]:
    """(path, message, line) of every issue ``text`` raises, in the order reported."""
    with pytest.raises(ConfigError) as caught:
        load_text(dedent(text), env={} if env is None else env)
    return [(issue.path, issue.message, issue.line) for issue in caught.value.issues]


def only_issue(text: str, env: Mapping[str, str] | None = None) -> tuple[str, str, int | None]:
    found = issues(text, env)
    assert len(found) == 1, found
    return found[0]


# --- valid configurations ------------------------------------------------------------------


def test_full_config_loads_with_expected_values() -> None:
    config = load_text(dedent("""
        server:
          listen: 0.0.0.0:8443
          public_url: https://proxy.corp.example/
          admin_listen: null
          trusted_proxies: [10.1.2.3/8, 192.0.2.7]
          shutdown_grace: 1m
          drain_delay: 500ms
          limits:
            max_header_count: 50
            max_header_bytes: 64KiB
            max_line_bytes: 4096
            header_timeout: 1h30m
            keepalive_timeout: 90
            max_request_body: 10MiB
        logging: {level: debug, format: console, access_log: false}
        policies:
          employees:
            - public: true
        routes:
          - name: wiki
            host: Wiki.Corp.Example.
            path: /docs
            upstream: http://127.0.0.1:9000/
            allow: [employees, {policy: employees}]
            preserve_host: true
            connect_timeout: 2s
            read_timeout: 2m
            websockets: false
          - name: status
            upstream: https://[::1]:9001
            allow: [{public: true}]
        """), env={})
    server = config.server
    assert server.listen == "0.0.0.0:8443"
    assert server.public_url == "https://proxy.corp.example"
    assert config.public_url == "https://proxy.corp.example"
    assert server.admin_listen is None
    assert server.trusted_proxies == ("10.0.0.0/8", "192.0.2.7/32")
    assert (server.shutdown_grace, server.drain_delay) == (60.0, 0.5)
    limits = server.limits
    assert (limits.max_header_count, limits.max_header_bytes, limits.max_line_bytes) == (50, 65536, 4096)
    assert (limits.header_timeout, limits.keepalive_timeout) == (5400.0, 90.0)
    assert limits.max_request_body == 10 * 1024 * 1024
    assert (config.logging.level, config.logging.format, config.logging.access_log) == ("debug", "console", False)
    assert config.policies == {"employees": (Rule(public=True),)}
    wiki, status = config.routes
    assert isinstance(wiki, RouteConfig)
    assert (wiki.name, wiki.host, wiki.path, wiki.upstream) == ("wiki", "wiki.corp.example", "/docs",
                                                                "http://127.0.0.1:9000")
    assert wiki.allow == (Rule(policy="employees"), Rule(policy="employees"))
    assert (wiki.preserve_host, wiki.connect_timeout, wiki.read_timeout, wiki.websockets) == (True, 2.0, 120.0,
                                                                                            False)
    assert status.host is None
    assert status.upstream == "https://[::1]:9001"


def test_defaults() -> None:
    config = load_text(MINIMAL, env={})
    assert isinstance(config, Config)
    assert config.server.listen == "127.0.0.1:8080"
    assert config.server.public_url is None
    assert config.public_url == "http://127.0.0.1:8080"
    assert config.server.admin_listen == "127.0.0.1:9090"
    assert config.server.trusted_proxies == ()
    assert config.server.tls is None
    assert (config.server.shutdown_grace, config.server.drain_delay) == (30.0, 0.0)
    limits = config.server.limits
    assert (limits.max_header_count, limits.max_header_bytes, limits.max_line_bytes) == (100, 32768, 8192)
    assert (limits.header_timeout, limits.keepalive_timeout, limits.max_request_body) == (10.0, 75.0, None)
    assert (config.logging.level, config.logging.format, config.logging.access_log) == ("info", "json", True)
    assert config.policies == {}
    (route,) = config.routes
    assert (route.host, route.path, route.preserve_host, route.websockets) == (None, "/", True, True)
    assert (route.connect_timeout, route.read_timeout) == (5.0, 60.0)


def test_the_example_file_loads_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    example = REPO / "config" / "example.yaml"
    monkeypatch.delenv("ZTPROXY_EXAMPLE_UPSTREAM", raising=False)
    config = load(example)
    assert [route.name for route in config.routes] == ["status", "wiki"]
    assert config.routes[0].allow == (Rule(public=True),)
    assert config.routes[1].allow == (Rule(policy="employees"),)
    assert config.routes[1].upstream == "http://127.0.0.1:8002"
    assert "employees" in config.policies
    monkeypatch.setenv("ZTPROXY_EXAMPLE_UPSTREAM", "http://127.0.0.1:8123")
    assert load(example).routes[1].upstream == "http://127.0.0.1:8123"


def _models_in(annotation: object) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in get_args(annotation):
        yield from _models_in(argument)


def test_the_example_documents_every_option() -> None:
    text = (REPO / "config" / "example.yaml").read_text(encoding="utf-8")
    models: list[type[BaseModel]] = [Config]
    seen: set[str] = set()
    while models:
        model = models.pop()
        for name, field in model.model_fields.items():
            seen.add(name)
            # A secret may be shown in the form people should write it: read from a file.
            assert f"{name}:" in text or f"{name}_file:" in text, \
                f"{model.__name__}.{name} is not in config/example.yaml"
            models.extend(_models_in(field.annotation))
    assert {"max_request_body", "min_version", "public", "policy", "websockets"} <= seen


# --- errors from the schema, translated ----------------------------------------------------


def test_unknown_key_suggests_the_close_one() -> None:
    assert only_issue("""
        server:
          lissen: 127.0.0.1:8080
        routes:
          - {name: app, upstream: 'http://127.0.0.1:1'}
        """) == ("server.lissen", "unknown key 'lissen' (did you mean 'listen'?)", 2)


def test_unknown_key_inside_an_allow_rule_and_without_suggestion() -> None:
    assert issues("""
        routes:
          - name: app
            upstream: http://127.0.0.1:1
            colour: blue
            allow:
              - publik: true
        """) == [
        ("routes[0].colour", "unknown key 'colour'", 4),
        ("routes[0].allow[0].publik", "unknown key 'publik' (did you mean 'public'?)", 6),
    ]


def test_wrong_types() -> None:
    assert issues("""
        server:
          limits:
            max_header_count: lots
        logging: [info]
        routes:
          - name: app
            upstream: http://127.0.0.1:1
            websockets: maybe
            allow: public
        """) == [
        ("server.limits.max_header_count", "expected a whole number, got the string 'lots'", 3),
        ("logging", "expected a mapping (key: value), got a list", 4),
        ("routes[0].websockets", "expected true or false, got the string 'maybe'", 8),
        ("routes[0].allow", "expected a list, got the string 'public'", 9),
    ]


def test_routes_must_be_a_non_empty_list() -> None:
    assert only_issue("routes: []\n") == ("routes", "needs at least 1 entry", 1)
    assert only_issue("routes: wiki\n") == ("routes", "expected a list, got the string 'wiki'", 1)


def test_bad_duration() -> None:
    path, message, line = only_issue("""
        server:
          shutdown_grace: 15x
        routes:
          - {name: app, upstream: 'http://127.0.0.1:1'}
        """)
    assert (path, line) == ("server.shutdown_grace", 2)
    assert message.startswith("invalid duration '15x'")


@pytest.mark.parametrize(("upstream", "expected"), [
    ("not a url", "scheme must be http or https"),
    ("ftp://127.0.0.1:21", "scheme must be http or https"),
    ("http://127.0.0.1:8080/app", "give only scheme, host and port"),
    ("http://127.0.0.1:99999", "invalid URL"),
    ("http://user:pw@127.0.0.1:1", "credentials in URLs are not allowed"),
])
def test_bad_upstream(upstream: str, expected: str) -> None:
    path, message, line = only_issue(f"""
        routes:
          - name: app
            upstream: "{upstream}"
        """)
    assert (path, line) == ("routes[0].upstream", 3)
    assert expected in message
    assert not message.startswith("Value error")


def test_bad_listen_address() -> None:
    assert issues("""
        server:
          listen: nowhere
          admin_listen: 127.0.0.1:70000
        routes:
          - {name: app, upstream: 'http://127.0.0.1:1'}
        """) == [
        ("server.listen", "invalid listen address 'nowhere': expected HOST:PORT, e.g. 127.0.0.1:8080", 2),
        ("server.admin_listen", "invalid port 70000 in '127.0.0.1:70000'", 3),
    ]


def test_missing_required_keys_point_at_the_parent() -> None:
    assert issues("""
        routes:
          - name: a
            upstream: http://127.0.0.1:1
          - name: b
            host: b.example
        """) == [("routes[1]", "missing required key 'upstream'", 4)]
    assert issues("""
        # no routes
        server:
          listen: 127.0.0.1:8080
        """) == [("", "missing required key 'routes'", 2)]


def test_bad_route_fields() -> None:
    assert [(path, line) for path, _, line in issues("""
        routes:
          - name: Wiki
            host: "wiki.example:8080"
            path: /a b
            upstream: http://127.0.0.1:1
            allow: [{}]
        """)] == [("routes[0].name", 2), ("routes[0].host", 3), ("routes[0].path", 4), ("routes[0].allow[0]", 6)]


@pytest.mark.parametrize(("host", "expected"), [
    ("::1", "[::1]"), ("[0:0::1]", "[::1]"), ("10.0.0.1", "10.0.0.1"), ("*.Corp.Example", "*.corp.example")])
def test_route_hosts_take_the_form_requests_are_matched_in(host: str, expected: str) -> None:
    config = load_text(f"routes:\n  - {{name: a, host: '{host}', upstream: 'http://127.0.0.1:1'}}\n", env={})
    assert config.routes[0].host == expected


@pytest.mark.parametrize(("key", "value"), [
    ("host", "'*.[::1]'"), ("host", "'fe80::1%eth0'"), ("path", "/..;/admin"), ("path", "/caf\u00e9"),
    ("path", "'/a\"b'"), ("read_timeout", ".inf"), ("read_timeout", ".nan"), ("read_timeout", "-1")])
def test_values_routing_could_not_use_are_refused(key: str, value: str) -> None:
    path, _, line = only_issue(f"routes:\n  - name: a\n    upstream: http://127.0.0.1:1\n    {key}: {value}\n")
    assert (path, line) == (f"routes[0].{key}", 4)


@pytest.mark.parametrize("origin", ["'null'", "https://app.example/path", "app.example", "'*'"])
def test_websocket_origins_must_be_origins(origin: str) -> None:
    path, message, line = only_issue(
        f"routes:\n  - name: a\n    upstream: http://127.0.0.1:1\n    websocket_origins: [{origin}]\n")
    assert (path, line) == ("routes[0].websocket_origins", 4)
    assert "scheme://host[:port]" in message


@pytest.mark.parametrize("policy", ["drop-protected", "drop-all", "reject"])
def test_headers_with_separators(policy: str) -> None:
    config = load_text(f"server: {{headers_with_separators: {policy}}}\nroutes: [{{name: a, upstream: 'http://127.0.0.1:1'}}]\n",
                       env={})
    assert config.server.headers_with_separators == policy
    path, _, _ = only_issue("server: {headers_with_separators: strip}\nroutes: [{name: a, upstream: 'http://127.0.0.1:1'}]\n")
    assert path == "server.headers_with_separators"


# --- YAML-level errors ---------------------------------------------------------------------


def test_duplicate_yaml_key() -> None:
    assert only_issue("""
        server:
          listen: 127.0.0.1:8080
          admin_listen: 127.0.0.1:9090
          listen: 127.0.0.1:8081
        routes:
          - {name: app, upstream: 'http://127.0.0.1:1'}
        """) == ("server.listen", "duplicate key 'listen' (first at line 2)", 4)


def test_yaml_syntax_error() -> None:
    path, message, line = only_issue("""
        server:
          listen: 127.0.0.1:8080
        routes:
          - name: app
            upstream: [http://127.0.0.1:1
        """)
    assert (path, line) == ("", 6)
    assert message.startswith("invalid YAML: ")
    path, message, line = only_issue("server:\n  listen: a: b\n")
    assert (path, line) == ("", 2)
    assert "mapping values are not allowed here" in message


def test_two_documents_are_a_syntax_error() -> None:
    path, message, line = only_issue(MINIMAL + "---\n" + MINIMAL)
    assert (path, line) == ("", 3)
    assert "single document" in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(text: str) -> None:
    assert only_issue(text) == ("", "the configuration is empty: it needs at least a routes section", 1)


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "a list"), ("just text\n", "the string 'just text'"),
                                            ("~\n", "nothing (null)")])
def test_top_level_must_be_a_mapping(text: str, kind: str) -> None:
    assert only_issue(text) == (
        "", f"the top level must be a mapping of sections (server, logging, policies, routes), not {kind}", 1)


def test_python_tags_are_refused() -> None:
    path, message, line = only_issue("""
        routes:
          - name: !!python/object/apply:os.system ["echo hacked"]
            upstream: http://127.0.0.1:1
        """)
    assert (path, line) == ("routes[0].name", 2)
    assert "unsupported YAML tag" in message
    path, message, line = only_issue("""
        routes:
          - name: app
            upstream: !!python/name:os.system
        """)
    assert (path, line) == ("routes[0].upstream", 3)


def test_anchors_aliases_and_merge_keys() -> None:
    config = load_text(dedent("""
        policies:
          staff: &staff
            - public: true
        routes:
          - &defaults
            name: a
            upstream: http://127.0.0.1:1
            read_timeout: 5m
            allow: *staff
          - <<: *defaults
            name: b
            path: /b
          - <<: [{name: c, websockets: false}, *defaults]
            path: /c
        """), env={})
    a, b, c = config.routes
    assert (b.name, b.upstream, b.read_timeout, b.path) == ("b", "http://127.0.0.1:1", 300.0, "/b")
    assert b.allow == a.allow == (Rule(public=True),)
    assert (c.name, c.websockets, c.read_timeout, c.path) == ("c", False, 300.0, "/c")


BAD_DURATION = "invalid duration '15x': use a number with a unit ms, s, m, h or d, e.g. 30s, 15m, 1h30m"


def test_errors_in_merged_values_point_at_the_anchor() -> None:
    assert issues("""
        routes:
          - &defaults
            name: a
            upstream: http://127.0.0.1:1
            read_timeout: 15x
          - <<: *defaults
            name: b
            path: /b
        """) == [
        ("routes[0].read_timeout", BAD_DURATION, 5),
        ("routes[1].read_timeout", BAD_DURATION, 5),
    ]


def test_bad_merge_value() -> None:
    assert only_issue("""
        routes:
          - <<: 5
            name: a
            upstream: http://127.0.0.1:1
        """) == ("routes[0]", "a merge key (<<) takes a mapping or a list of mappings, e.g. <<: *defaults", 2)


def test_recursive_alias_and_alias_bombs_are_refused() -> None:
    path, message, line = only_issue("routes: &r [*r]\n")
    assert (path, line) == ("routes[0]", 1)
    assert message.startswith("recursive alias")
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    path, message, line = only_issue("\n".join(levels) + "\n")
    assert (path, line) == ("", 1)
    assert f"more than {MAX_NODES} values" in message


def test_deep_nesting_is_an_issue_not_a_crash() -> None:
    path, message, _ = only_issue("routes: " + "[" * 5000 + "]" * 5000 + "\n")
    assert path == ""
    assert "nested too deeply" in message


# --- environment variables -----------------------------------------------------------------


def test_env_substitution_everywhere_in_strings() -> None:
    config = load_text(dedent("""
        server:
          listen: ${LISTEN}
          limits:
            max_header_count: ${COUNT}
        logging:
          access_log: ${ACCESS_LOG}
        routes:
          - name: app
            upstream: http://${HOST}:${PORT:-8080}
            path: /${PREFIX:-docs}
            allow: [{public: true}]
        """), env={"LISTEN": "0.0.0.0:80", "COUNT": "7", "ACCESS_LOG": "false", "HOST": "10.0.0.5",
                   "PREFIX": ""})
    assert config.server.listen == "0.0.0.0:80"
    assert config.server.limits.max_header_count == 7
    assert config.logging.access_log is False
    assert config.routes[0].upstream == "http://10.0.0.5:8080"
    assert config.routes[0].path == "/docs"  # ":-" also covers a variable set to ""


def test_env_default_is_used_only_when_unset_or_empty() -> None:
    assert substitute("${A:-x}", {}) == ("x", [])
    assert substitute("${A:-x}", {"A": ""}) == ("x", [])
    assert substitute("${A:-x}", {"A": "y"}) == ("y", [])
    assert substitute("${A:-}", {}) == ("", [])
    assert substitute("${A}", {"A": ""}) == ("", [])


def test_dollar_dollar_brace_is_a_literal() -> None:
    assert substitute("$${HOME} and $$ and $HOME", {"HOME": "/root"}) == ("${HOME} and $$ and $HOME", [])
    config = load_text(dedent("""
        policies:
          "a${b}": [{public: true}]  # keys are not substituted
        routes:
          - name: app
            upstream: http://127.0.0.1:1
            allow: ["a$${b}"]
        """), env={"b": "nope"})
    assert config.routes[0].allow == (Rule(policy="a${b}"),)


def test_unset_variables_are_all_reported_where_they_are_used() -> None:
    assert issues("""
        server:
          listen: ${LISTEN}
        routes:
          - name: app
            upstream: http://${UPSTREAM_HOST}:${UPSTREAM_PORT}
        """) == [
        ("server.listen", "environment variable 'LISTEN' is not set", 2),
        ("routes[0].upstream", "environment variable 'UPSTREAM_HOST' is not set", 5),
        ("routes[0].upstream", "environment variable 'UPSTREAM_PORT' is not set", 5),
    ]


def test_malformed_references() -> None:
    assert substitute("${not a name}", {})[1] == [
        "invalid reference '${not a name}': expected ${NAME} or ${NAME:-default} (write '$${' for a literal '${')"]
    assert substitute("a ${OPEN", {})[1] == [
        "unterminated '${': close it with '}', or write '$${' for a literal '${'"]
    path, message, line = only_issue("""
        routes:
          - name: app
            upstream: http://${HOST
        """)
    assert (path, line) == ("routes[0].upstream", 3)
    assert message.startswith("unterminated")


def test_substituted_values_are_not_parsed_as_yaml() -> None:
    path, message, line = only_issue("""
        routes:
          - name: ${NAME}
            upstream: http://127.0.0.1:1
        """, env={"NAME": "{a: b}"})
    assert (path, line) == ("routes[0].name", 2)
    assert message.startswith("invalid route name '{a: b}'")


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZTPROXY_TEST_PORT", "8123")
    config = load_text(MINIMAL.replace("8001", "${ZTPROXY_TEST_PORT}"))
    assert config.routes[0].upstream == "http://127.0.0.1:8123"


# --- *_file keys ---------------------------------------------------------------------------


def test_file_key_reads_the_value_and_strips_the_newline(tmp_path: Path) -> None:
    secret = tmp_path / "public_url"
    secret.write_text("https://proxy.example\n")
    (tmp_path / "upstream").write_text("http://127.0.0.1:5\r\n")
    config = load_text(dedent(f"""
        server:
          public_url_file: {secret}
        routes:
          - name: app
            upstream_file: ${{DIR}}/upstream
        """), env={"DIR": str(tmp_path)})
    assert config.server.public_url == "https://proxy.example"
    assert config.routes[0].upstream == "http://127.0.0.1:5"


def test_file_key_errors(tmp_path: Path) -> None:
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    found = issues(f"""
        routes:
          - name: a
            upstream_file: {tmp_path}/missing
          - name: b
            path: /b
            upstream: http://127.0.0.1:1
            upstream_file: {tmp_path}/missing
          - name: c
            path: /c
            upstream_file: {binary}
        """)
    assert found == [
        ("routes[0].upstream_file", f"cannot read '{tmp_path}/missing': No such file or directory", 3),
        ("routes[1].upstream_file", "give either upstream or upstream_file, not both", 7),
        ("routes[2].upstream_file", f"cannot read '{binary}': not UTF-8 text", 10),
    ]


# --- cross-entry checks --------------------------------------------------------------------


def test_duplicate_route_name() -> None:
    assert only_issue("""
        routes:
          - name: wiki
            upstream: http://127.0.0.1:1
          - name: wiki
            path: /other
            upstream: http://127.0.0.1:2
        """) == ("routes[1].name", "duplicate route name 'wiki' (first at line 2)", 4)


def test_duplicate_host_and_path() -> None:
    assert issues("""
        routes:
          - {name: a, host: wiki.example, upstream: 'http://127.0.0.1:1'}
          - {name: b, host: Wiki.Example., path: /, upstream: 'http://127.0.0.1:2'}
          - {name: c, host: wiki.example, path: /api, upstream: 'http://127.0.0.1:3'}
          - {name: d, path: /api, upstream: 'http://127.0.0.1:4'}
          - {name: e, path: /api, upstream: 'http://127.0.0.1:5'}
          - {name: f, host: other.example, path: /api, upstream: 'http://127.0.0.1:6'}
        """) == [
        ("routes[1]", "duplicate route for host 'wiki.example' and path '/' (first at line 2, route 'a')", 3),
        ("routes[4]", "duplicate route for any host and path '/api' (first at line 5, route 'd')", 6),
    ]


def test_unknown_policy_reference() -> None:
    assert issues("""
        policies:
          employees:
            - public: true
        routes:
          - name: app
            upstream: http://127.0.0.1:1
            allow:
              - employes
              - policy: contractors
        """) == [
        ("routes[0].allow[0]", "unknown policy 'employes' (did you mean 'employees'?)", 8),
        ("routes[0].allow[1].policy", "unknown policy 'contractors': define it under policies", 9),
    ]


def test_policies_cannot_name_policies_and_unused_ones_are_fine() -> None:
    assert only_issue("""
        policies:
          employees: [{public: true}]
          admins: [employees]
          unused: [{public: true}]
        routes:
          - {name: app, upstream: 'http://127.0.0.1:1', allow: [admins]}
        """) == ("policies.admins[0]", ("policy 'admins' names policy 'employees': policies cannot contain "
                                        "other policies; copy its rules or list both in the route's allow"), 3)


def test_tls_files_must_be_readable(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not really a certificate\n")
    assert issues(f"""
        server:
          tls:
            cert_file: {tmp_path}/nope.pem
            key_file: {tmp_path}
        routes:
          - {{name: app, upstream: 'http://127.0.0.1:1'}}
        """) == [
        ("server.tls.cert_file", f"cannot read the certificate '{tmp_path}/nope.pem': no such file", 3),
        ("server.tls.key_file", f"cannot read the private key '{tmp_path}': it is a directory", 4),
    ]
    config = load_text(dedent(f"""
        server:
          tls: {{cert_file: {cert}, key_file: {cert}, min_version: "1.3"}}
        routes:
          - {{name: app, upstream: 'http://127.0.0.1:1'}}
        """), env={})
    assert config.server.tls is not None
    assert config.server.tls.min_version == "1.3"
    assert config.public_url == "https://127.0.0.1:8080"


def test_problems_are_reported_once() -> None:
    # The unset variable leaves an empty upstream; pydantic's complaint about it is noise.
    # The invalid route names are pydantic's to report, not also "duplicates".
    assert issues("""
        routes:
          - name: Wiki
            upstream: ${UPSTREAM}
          - name: Wiki
            upstream: http://127.0.0.1:1
            path: /b
            allow: [{policy: 5}]
        """) == [
        ("routes[0].name", "invalid route name 'Wiki': use lowercase letters, digits, '.', '_' and '-'", 2),
        ("routes[0].upstream", "environment variable 'UPSTREAM' is not set", 3),
        ("routes[1].name", "invalid route name 'Wiki': use lowercase letters, digits, '.', '_' and '-'", 4),
        ("routes[1].allow[0].policy", "expected a string, got the number 5", 7),
    ]


def test_checks_survive_malformed_shapes() -> None:
    found = issues("""
        server: {tls: [a]}
        policies: [employees]
        routes:
          - 5
          - [a, b]
          - {name: [x], host: 7, path: {}, upstream: 'http://127.0.0.1:1', allow: {policy: x}}
          - {name: a, upstream: 'http://127.0.0.1:1', allow: [[x], 5, ~]}
        """)
    rule = "expected a rule such as {public: true} or a policy name, got"
    assert found == [
        ("server.tls", "expected a mapping (key: value), got a list", 1),
        ("policies", "expected a mapping (key: value), got a list", 2),
        ("routes[0]", "expected a mapping (key: value), got the number 5", 4),
        ("routes[1]", "expected a mapping (key: value), got a list", 5),
        ("routes[2].allow", "expected a list, got a mapping", 6),
        ("routes[2].host", "expected a string, got the number 7", 6),
        ("routes[2].name", "expected a string, got a list", 6),
        ("routes[2].path", "expected a string, got a mapping", 6),
        ("routes[3].allow[0]", f"{rule} a list", 7),
        ("routes[3].allow[1]", f"{rule} the number 5", 7),
        ("routes[3].allow[2]", f"{rule} nothing (null)", 7),
    ]


# --- everything at once, and files ---------------------------------------------------------


def test_five_errors_are_reported_together_in_line_order() -> None:
    text = dedent("""
        routes:
          - name: wiki
            upstream: http://127.0.0.1:1
            allow: [staff]
          - name: wiki
            upstream: ftp://127.0.0.1:2
            path: /b
        server:
          listen: ${LISTEN}
          shutdown_grace: 15x
        """)
    with pytest.raises(ConfigError) as caught:
        load_text(text, "five.yaml", env={})
    error = caught.value
    assert [(issue.line, issue.path) for issue in error.issues] == [
        (4, "routes[0].allow[0]"),
        (5, "routes[1].name"),
        (6, "routes[1].upstream"),
        (9, "server.listen"),
        (10, "server.shutdown_grace"),
    ]
    rendered = str(error).splitlines()
    assert rendered[0] == "five.yaml: 5 configuration errors"
    assert rendered[1] == "  line 4: routes[0].allow[0]: unknown policy 'staff': define it under policies"
    assert error.code == "config-invalid"


def test_load_reads_files(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())  # a UTF-8 byte order mark is fine
    assert load(good, env={}).routes[0].name == "app"
    assert load(str(good), env={}).routes[0].name == "app"


@pytest.mark.parametrize(("content", "message", "line"), [
    (None, "file not found", None),
    (b"routes:\n  - name: caf\xe9\n", "the file is not UTF-8 text (byte 0xe9 at offset 21)", 2),
    (b"\x00\x01\x02\x03binary\xff", "the file is not UTF-8 text (byte 0xff at offset 10)", 1),
    (b"routes:\n\x00\x01\x02\n", "invalid YAML: character #x0000 is not allowed in a YAML file", 2),
])
def test_load_reports_unreadable_files(tmp_path: Path, content: bytes | None, message: str,
                                       line: int | None) -> None:
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    assert [(i.path, i.message, i.line) for i in caught.value.issues] == [("", message, line)]
    assert caught.value.source == str(path)


def test_load_reports_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env={})
    assert [i.message for i in caught.value.issues] == ["this is a directory, expected a YAML file"]


# --- never a stack trace -------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes(text: str) -> None:
    try:
        load_text(text, env={})
    except ConfigError as error:
        assert error.issues


_KEYS = st.sampled_from(["server", "routes", "policies", "logging", "tls", "cert_file", "name", "host", "path",
                         "upstream", "allow", "public", "policy", "listen", "limits", "upstream_file",
                         "max_request_body", "employees", 0, "x"])
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=True),
                    st.sampled_from(["wiki", "http://127.0.0.1:1", "/", "15m", "${X}", "employees", "a.example",
                                     "/nonexistent", ""]))
_SHAPES = st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner,
                                                                                            max_size=5),
                       max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _SHAPES, max_size=5))
def test_arbitrary_shapes_never_crash(data: dict[object, object]) -> None:
    text = yaml.safe_dump(data)
    try:
        load_text(text, env={})
    except ConfigError as error:
        assert error.issues
        assert all(issue.line is not None for issue in error.issues)


def test_routes_only_signed_in_users_pass_need_an_identity_provider() -> None:
    found = issues("""
        policies:
          staff: [{groups: [staff]}]
          office: [{source_cidrs: [10.0.0.0/8]}]
        routes:
          - {name: wiki, path: /wiki, upstream: "http://127.0.0.1:1", allow: [{email_domains: [corp.example]}]}
          - {name: named, path: /named, upstream: "http://127.0.0.1:1", allow: [staff]}
          - {name: owner, path: /owner, upstream: "http://127.0.0.1:1", allow: [{device: {owner_is_user: true}}]}
          - {name: mixed, path: /mixed, upstream: "http://127.0.0.1:1",
             allow: [{users: [ada]}, {source_cidrs: [10.0.0.0/8]}]}
          - {name: office, path: /office, upstream: "http://127.0.0.1:1", allow: [office]}
          - {name: devices, path: /devices, upstream: "http://127.0.0.1:1", allow: [{device: {managed: true}}]}
        """)
    assert [(path, line) for path, _, line in found] == [
        ("routes[0].allow", 5), ("routes[1].allow", 6), ("routes[2].allow", 7)]
    assert "no identity provider is configured" in found[0][1] and "'wiki'" in found[0][1]


@pytest.mark.parametrize(("routes", "said"), [(1, "OK (1 route)"), (2, "OK (2 routes)")])
def test_check_counts_routes_in_words(tmp_path: Path, capsys: pytest.CaptureFixture[str], routes: int,
                                      said: str) -> None:
    from ztproxy import cli

    path = tmp_path / "config.yaml"
    path.write_text("routes:\n" + "".join(f"  - {{name: r{i}, path: /r{i}, upstream: 'http://127.0.0.1:1', "
                                          "allow: [{public: true}]}\n" for i in range(routes)), encoding="utf-8")
    assert cli.main(["check", "-c", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: {said}"


def test_a_balancer_in_front_needs_the_public_url_when_users_sign_in() -> None:
    provider = "identity_providers: [{name: corp, issuer: 'https://idp.example', client_id: z, client_secret: s}]\n"
    routes = "routes: [{name: a, upstream: 'http://127.0.0.1:1', allow: [{public: true}]}]\n"
    path, message, line = only_issue("server: {trusted_proxies: [10.0.0.0/8]}\n" + provider + routes)
    assert (path, line) == ("server.trusted_proxies", 1)
    assert "server.public_url" in message and "server.trusted_proxies" in message
    load_text("server: {trusted_proxies: [10.0.0.0/8], public_url: 'https://ztproxy.example'}\n" + provider + routes,
              env={})
    load_text("server: {trusted_proxies: [10.0.0.0/8]}\n" + routes, env={})  # nobody signs in: nowhere to return
