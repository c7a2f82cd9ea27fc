"""The JSON Schema of the configuration file, for editors and CI (``ztproxy config schema``).

Made from :class:`~ztproxy.config.schema.Config` by pydantic, then widened to what the loader
accepts in a file as people write it, so that a valid file is never flagged:

- durations and sizes as written (``30s``, ``1h30m``, ``64KiB``) besides bare numbers;
- names, groups and versions YAML reads as numbers; a policy name for a rule; ``groups`` as a
  list; one claim value instead of a list;
- a string holding ``${NAME}`` wherever a number, a boolean or one of a few words is expected
  (``source`` substitutes variables before validation, and the result is converted);
- ``foo_file`` next to every option ``foo`` (the value read from that file), a required option
  given that way included.

Every property carries its description from ``config/example.yaml`` and its default as the
file would write it, when the example file is at hand (a source checkout). What the loader
checks beyond the types (unknown policy names, files that must exist, one of two keys) stays
``ztproxy check``'s job. This module imports no aiohttp.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import IO, Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticUndefined, core_schema

from ztproxy.config import reference, rules, values
from ztproxy.config.comments import model_of
from ztproxy.config.schema import Config

DIALECT = "https://json-schema.org/draft/2020-12/schema"
# A string in which ${NAME} will be substituted: it may become any value the option takes.
ENV_STRING: JsonSchemaValue = {"type": "string", "pattern": r"\$\{",
                               "description": "a value from the environment: ${NAME} or ${NAME:-default}"}
ENV_REF: JsonSchemaValue = {"$ref": "#/$defs/EnvString"}
_DURATION = r"^\s*(\d+(\.\d+)?\s*)$|^\s*(\d+(\.\d+)?([mM][sS]|[sSmMhHdD]))+\s*$"
_SIZE = r"^\s*\d+\s*([bB]|[kKmMgG]([iI]?[bB])?)?\s*$"
_NAME: JsonSchemaValue = {"type": ["string", "integer"]}
_SCALARS = {"integer", "number", "boolean"}


def _duration(_: JsonSchemaValue) -> JsonSchemaValue:
    return {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": _DURATION}],
            "description": "a duration: 500ms, 30s, 15m, 12h, 1d, 1h30m; a bare number is seconds"}


def _size(_: JsonSchemaValue) -> JsonSchemaValue:
    return {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": _SIZE}],
            "description": "a size: 64KiB, 10MiB, 1GiB (KB, MB, GB mean the same); a bare number is bytes"}


def _or_string(inner: JsonSchemaValue) -> JsonSchemaValue:
    return {"anyOf": [{"type": "string"}, inner]}


def _or_list(inner: JsonSchemaValue) -> JsonSchemaValue:
    return {"anyOf": [{"type": "array", "items": _NAME}, inner]}


def _claim_values(inner: JsonSchemaValue) -> JsonSchemaValue:
    if "anyOf" in inner:  # claims: ... | None
        return {**inner, "anyOf": [_claim_values(branch) for branch in inner["anyOf"]]}
    if inner.get("type") != "object":
        return inner
    each = inner.get("additionalProperties", {})
    scalar = {"type": ["string", "integer", "boolean"]}
    return {**inner, "additionalProperties": {"anyOf": [scalar, {**each, "items": scalar}]}}


# The schema of a value type, known by the validator the loader runs on it; given the one
# pydantic would write.
VALUE_SCHEMAS: dict[Callable[..., Any], Callable[[JsonSchemaValue], JsonSchemaValue]] = {
    values.parse_duration: _duration,
    values.parse_byte_size: _size,
    values._check_name: lambda _: dict(_NAME),
    values._check_platform: lambda _: dict(_NAME),
    values._check_os_version: lambda _: dict(_NAME),
    rules._policy_reference: _or_string,
    rules._groups_list: _or_list,
    rules._claim_lists: _claim_values,
}


class _Generator(GenerateJsonSchema):
    """pydantic's generator, with the value types of :data:`VALUE_SCHEMAS`."""

    def _known(self, schema: Any, inner: JsonSchemaValue) -> JsonSchemaValue:
        function = schema["function"]["function"]
        widen = VALUE_SCHEMAS.get(function)
        return widen(inner) if widen is not None else inner

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        return self._known(schema, super().function_before_schema(schema))

    def function_after_schema(self, schema: core_schema.AfterValidatorFunctionSchema) -> JsonSchemaValue:
        return self._known(schema, super().function_after_schema(schema))


def config_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a ztproxy configuration file."""
    schema = Config.model_json_schema(schema_generator=_Generator)
    models = _models(Config)
    try:
        described = {(row_model, name): text for row_model, name, text in _descriptions()}
    except (OSError, reference.MissingDescriptions):
        described = {}  # an installed package has no config/example.yaml: types and defaults only
    for name, definition in [("Config", schema), *schema.get("$defs", {}).items()]:
        model = models.get(name)
        if model is not None:
            _document(definition, model, described)
    widened = _with_env(schema)
    widened.setdefault("$defs", {})["EnvString"] = ENV_STRING
    return {"$schema": DIALECT, **widened, "title": "ztproxy configuration"}


def write(stream: IO[str]) -> None:
    """``ztproxy config schema``: the schema as indented JSON."""
    stream.write(json.dumps(config_schema(), indent=2) + "\n")


def _models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from ``root``, by the name pydantic gives its definition."""
    found: dict[str, type[BaseModel]] = {}
    todo = [root]
    while todo:
        model = todo.pop()
        if model.__name__ in found:
            continue
        found[model.__name__] = model
        for info in model.model_fields.values():
            inner, _ = model_of(info.annotation)
            if inner is not None:
                todo.append(inner)
    return found


def _descriptions() -> list[tuple[type[BaseModel], str, str]]:
    """(model, field, description) from the reference: options, then the rule criteria."""
    by_path = {row.path: row.description for row in reference.options()}
    by_path.update({f"rule.{row.path}": row.description for row in reference.criteria()})
    found: list[tuple[type[BaseModel], str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            path = f"{prefix}.{name}" if prefix else name
            if path in by_path:
                found.append((model, name, by_path[path]))
            inner, is_list = model_of(info.annotation)
            if inner is rules.Rule:
                continue
            if inner is not None and not (model is rules.Rule and name == "groups"):
                walk(inner, f"{path}[]" if is_list else path)

    walk(Config, "")
    walk(rules.Rule, "rule")
    return found


def _document(definition: dict[str, Any], model: type[BaseModel],
              described: dict[tuple[type[BaseModel], str], str]) -> None:
    """Descriptions, defaults as written in a file, ``*_file`` keys and required ones."""
    properties: dict[str, Any] = definition.get("properties", {})
    for name, info in model.model_fields.items():
        prop = properties.get(name)
        if prop is None:
            continue
        prop.pop("title", None)
        if (model, name) in described:
            prop["description"] = described[model, name]
        if info.default is not PydanticUndefined and "default" in prop:
            label = reference.type_label(reference.field_type(info))
            if label.startswith(("duration", "size")) and info.default is not None:
                prop["default"] = reference.yaml_default(info.default, reference.field_type(info))
    if properties:
        names = "|".join(sorted(properties))
        definition["patternProperties"] = {f"^({names})_file$": {
            "type": "string", "description": "read the option's value from this file (e.g. a mounted secret)"}}
    required = definition.pop("required", [])
    if required:
        definition["allOf"] = [{"anyOf": [{"required": [name]}, {"required": [f"{name}_file"]}]}
                               for name in required]


def _with_env(node: Any, *, branch: bool = False) -> Any:
    """Let a ``${NAME}`` string stand wherever a number, a boolean or a fixed word is expected.

    ``branch``: ``node`` is one alternative of an ``anyOf``, which gets the string alternative once.
    """
    if isinstance(node, list):
        return [_with_env(item) for item in node]
    if not isinstance(node, dict):
        return node
    walked = {key: value if key in ("default", "examples", "const", "enum") else _with_env(value)
              for key, value in node.items()}
    if "anyOf" in node:
        walked["anyOf"] = [_with_env(item, branch=True) for item in node["anyOf"]]
        if any(_is_fixed(item) for item in node["anyOf"]) and ENV_REF not in walked["anyOf"]:
            walked["anyOf"].append(ENV_REF)
        return walked
    if _is_fixed(node) and not branch:
        notes = {key: walked.pop(key) for key in ("description", "default") if key in walked}
        return {"anyOf": [walked, ENV_REF], **notes}
    return walked


def _is_fixed(node: Any) -> bool:
    """A schema no ``${NAME}`` string passes: a number, a boolean, one of some words, a pattern."""
    if not isinstance(node, dict):
        return False
    kind = node.get("type")
    return (isinstance(kind, str) and kind in _SCALARS) or any(key in node for key in ("enum", "const", "pattern"))
