"""The configuration reference and the JSON Schema, both made from the schema and config/example.yaml."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ztproxy.config import Config, load_text, reference
from ztproxy.config import jsonschema as config_jsonschema
from ztproxy.config.comments import model_of

REPO = Path(__file__).resolve().parents[2]
CONFIGS = [REPO / "config" / "example.yaml", *sorted((REPO / "deploy").glob("*/config.yaml")),
           REPO / "deploy" / "compose" / "ztproxy.yaml"]


def _schema_paths(model: Any = Config, prefix: str = "") -> list[str]:
    paths = []
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        paths.append(path)
        inner, is_list = model_of(info.annotation)
        if inner is not None and inner.__name__ != "Rule":
            paths.extend(_schema_paths(inner, f"{path}[]" if is_list else path))
    return paths


def test_every_option_of_the_schema_has_a_described_row() -> None:
    rows = reference.options()
    assert [row.path for row in rows] == _schema_paths()
    assert all(row.description for row in rows)
    by_path = {row.path: row for row in rows}
    assert by_path["server.limits.max_header_bytes"].type == "size"
    assert by_path["server.limits.max_header_bytes"].default == "32KiB"
    assert by_path["sessions.lifetime"].default == "12h"
    assert by_path["logging.flush_interval"].default == "100ms"
    assert by_path["routes[].upstream"].default == "required"
    assert by_path["routes[].allow"].type == "list of rule or policy name"
    assert by_path["server.tls.min_version"].type == '"1.2" or "1.3"'
    # Commented-out keys are documented too, and keys sharing one comment share it.
    assert "bearer token" in by_path["server.admin_token"].description
    assert by_path["server.tls.key_file"].description == by_path["server.tls.cert_file"].description
    assert "jwks_url" in by_path["devices.signed.jwks_url"].description
    # The rule language has rows of its own, not a wall of text in routes[].allow.
    assert "[mfa-required]" not in by_path["routes[].allow"].description


def test_every_rule_criterion_is_described() -> None:
    rows = {row.path: row for row in reference.criteria()}
    assert {"public", "users", "groups", "mfa", "device.min_score", "time_window.timezone"} <= set(rows)
    assert "[mfa-required]" in rows["mfa"].description
    assert rows["max_auth_age"].type == "duration"


def test_an_option_the_example_does_not_describe_fails_loudly(tmp_path: Path) -> None:
    text = (REPO / "config" / "example.yaml").read_text(encoding="utf-8")
    without = text.replace("  # Most header lines in one request. Between 1 and 1000. Default: 100.\n", "")
    assert without != text
    example = tmp_path / "example.yaml"
    example.write_text(without, encoding="utf-8")
    with pytest.raises(reference.MissingDescriptions) as raised:
        reference.options(example)
    assert raised.value.paths == ["server.limits.max_header_count"]


def test_the_markdown_has_a_table_per_section() -> None:
    page = reference.markdown()
    for section in ("## server", "## sessions", "## routes", "## Rule criteria"):
        assert section in page
    assert "| `server.limits.max_header_bytes` | size | `32KiB` |" in page


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (0.1, "100ms"), (90, "1m30s"), (43200, "12h"),
                                               (86400, "1d")])
def test_durations_are_written_as_in_a_file(seconds: float, text: str) -> None:
    assert reference.format_duration(seconds) == text


# --- the JSON Schema ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = config_jsonschema.config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator: jsonschema.Draft202012Validator, text: str) -> list[str]:
    data = yaml.safe_load(textwrap.dedent(text))
    return sorted(".".join(map(str, error.absolute_path)) for error in validator.iter_errors(data))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: str(path.relative_to(REPO)))
def test_the_shipped_configurations_validate(validator: jsonschema.Draft202012Validator, path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert [error.message for error in validator.iter_errors(data)] == []


def test_what_the_loader_accepts_the_schema_accepts(validator: jsonschema.Draft202012Validator,
                                                    tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n", encoding="utf-8")
    text = f"""
        server:
          shutdown_grace: 1h30m
          watch_config: ${{WATCH:-false}}
          limits: {{max_header_bytes: 64KiB, max_request_body: 10MB, max_header_count: "${{COUNT:-50}}"}}
        logging: {{level: "${{LEVEL:-debug}}"}}
        identity_providers:
          - issuer: https://idp.corp.example
            client_id_file: {secret}
        policies:
          staff: [{{groups: [eng, 42], claims: {{level: 3}}}}]
        routes:
          - name: a
            upstream: http://127.0.0.1:8001
            allow: [staff, {{public: true, time_window: {{start: "08:00", end: "19:00"}}}}]
        """
    load_text(textwrap.dedent(text))  # the loader takes it...
    assert _errors(validator, text) == []  # ...and so does the schema


def test_an_invalid_file_is_flagged(validator: jsonschema.Draft202012Validator) -> None:
    assert _errors(validator, """
        server: {shutdown_grace: 15x, tls: {cert_file: a.pem}}
        logging: {level: loud}
        routes:
          - {name: a, upstream: "http://127.0.0.1:8001", allw: []}
        """) == ["logging.level", "routes.0", "server.shutdown_grace", "server.tls"]
    assert _errors(validator, "server: {}\n") == [""]  # routes are required


def test_the_command_prints_the_schema_as_json() -> None:
    out = io.StringIO()
    config_jsonschema.write(out)
    schema = json.loads(out.getvalue())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "ztproxy configuration"
    assert "server" in schema["properties"]


def test_ztproxy_config_schema_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    from ztproxy import cli

    assert cli.main(["config", "schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(config_jsonschema.config_schema()))
    example = yaml.safe_load(Path("config/example.yaml").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(printed).validate(example)
