"""Loading a configuration: the public :func:`load` / :func:`load_text`, and validation.

They return a validated :class:`~ztproxy.config.schema.Config` or raise one
:class:`~ztproxy.errors.ConfigError` carrying every problem found, each with its YAML path
(``routes[2].upstream``) and line. The stages, each collecting issues:

1. :mod:`ztproxy.config.source` reads the YAML into plain data with a line for every path.
2. :meth:`Config.model_validate` checks every field; its errors are translated here into
   plain words located in the file, with a did-you-mean for unknown keys.
3. :func:`ztproxy.config.checks.run` checks what spans entries, on the raw data.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import types
from collections.abc import Collection, Mapping
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ztproxy.config import checks
from ztproxy.config.rules import Rule
from ztproxy.config.schema import Config
from ztproxy.config.source import Document, YamlPath, parse, read_file
from ztproxy.errors import ConfigError, ConfigIssue

# Loc parts pydantic adds for validators and unions, which are not keys of the document.
_WRAPPER_PART = re.compile(r"\[key\]|[a-z-]+\[.*\]|[A-Z][A-Za-z0-9]*")
# The messages of the schema's ``*_file`` handling name the key they are about.
_FILE_KEY_MESSAGES = (
    re.compile(r"(?P<key>\w+_file): (?P<message>.+)", re.DOTALL),
    re.compile(r"(?P<message>give either \w+ or (?P<key>\w+_file), not both)"),
)


def load(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate a configuration file (``env`` defaults to ``os.environ``)."""
    source = os.fspath(path)
    return load_text(read_file(source), source, env=env)


def load_text(text: str, source: str = "<string>", *, env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate configuration text; ``source`` names it in error messages."""
    parsed = parse(text, os.environ if env is None else env)
    document = parsed.document
    issues = list(parsed.issues)
    if not isinstance(document.data, dict):
        if document.data is not None or not issues:
            kind = _yaml_kind(document.data)
            issues.append(document.issue((), "the top level must be a mapping of sections "
                                             f"(server, logging, policies, routes), not {kind}"))
        raise ConfigError(issues, source)
    config, invalid, flagged = _validate(document, parsed.placeholders)
    issues.extend(invalid)
    issues.extend(checks.run(document, flagged))
    if issues or config is None:
        raise ConfigError(issues, source)
    return config


def _validate(document: Document, placeholders: Collection[YamlPath],
              ) -> tuple[Config | None, list[ConfigIssue], set[YamlPath]]:
    """Validate with pydantic: the config, or its errors as issues and the paths they are at."""
    try:
        return Config.model_validate(document.data), [], set()
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    issues: list[ConfigIssue] = []
    paths = [_document_path(error["loc"], document.data) for error in errors]
    for error, path in zip(errors, paths, strict=True):
        if any(path[: len(p)] == p for p in placeholders):
            continue  # already reported: an unset variable or an unsupported tag
        if error["type"] == "too_short" and any(len(p) > len(path) and p[: len(path)] == path for p in paths):
            continue  # "at least 1 item after validation" when the items are invalid: noise
        issues.append(_translate(error, path, document))
    return None, issues, set(paths)


def _document_path(loc: tuple[int | str, ...], data: Any) -> YamlPath:
    """Pydantic's loc without the parts validators and unions add."""
    path: list[Any] = []
    node = data
    for part in loc:
        if _has(node, part):
            node = node[part]
        elif isinstance(part, str) and _WRAPPER_PART.fullmatch(part):
            continue
        else:
            node = None
        path.append(part)
    return tuple(path)


def _translate(error: ErrorDetails, path: YamlPath, document: Document) -> ConfigIssue:
    """One pydantic error as an issue in the file's words, at the most precise path."""
    kind = error["type"]
    if kind == "missing" and path:
        return document.issue(path[:-1], f"missing required key {path[-1]!r}")
    if kind == "extra_forbidden" and path:
        return document.issue(path, f"unknown key {path[-1]!r}{_suggestion(path)}")
    message = _plain_message(error)
    if kind == "model_type" and _model_at(path) is Rule:
        message = f"expected a rule such as {{public: true}} or a policy name, got {_yaml_kind(error['input'])}"
    node = _at(document.data, path)
    for pattern in _FILE_KEY_MESSAGES:
        match = pattern.fullmatch(message)
        if match and isinstance(node, dict) and match.group("key") in node:
            return document.issue((*path, match.group("key")), match.group("message"))
    return document.issue(path, message)


def _plain_message(error: ErrorDetails) -> str:
    kind, value = error["type"], error.get("input")
    context = error.get("ctx") or {}
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping (key: value), got {_yaml_kind(value)}"
    if kind in ("tuple_type", "list_type"):
        return f"expected a list, got {_yaml_kind(value)}"
    if kind == "string_type":
        return f"expected a string, got {_yaml_kind(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {_yaml_kind(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {_yaml_kind(value)}"
    if kind == "too_short" and "min_length" in context:
        return f"needs at least {context['min_length']} entr{'y' if context['min_length'] == 1 else 'ies'}"
    return str(error["msg"]).removeprefix("Value error, ")


def _yaml_kind(value: Any) -> str:
    """``value`` described in YAML's words, for "expected ..., got ..." messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 40 else "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _at(data: Any, path: YamlPath) -> Any:
    for part in path:
        if _has(data, part):
            data = data[part]
        else:
            return None
    return data


def _suggestion(path: YamlPath) -> str:
    model = _model_at(path[:-1])
    key = path[-1]
    if model is None or not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key, list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_at(path: YamlPath) -> type[BaseModel] | None:
    """The schema model that validates the mapping at ``path``, if any."""
    current: Any = Config
    for part in path:
        current = _unwrap(current)
        if _is_model(current):
            field = current.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            current = field.annotation
            continue
        origin, args = get_origin(current), get_args(current)
        if origin in (tuple, list) and args:
            current = args[0]
        elif origin is dict and len(args) == 2:
            current = args[1]
        else:
            return None
    current = _unwrap(current)
    return current if _is_model(current) else None


def _unwrap(annotation: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` -> ``X``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            options = [a for a in get_args(annotation) if a is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return get_origin(annotation) is None and inspect.isclass(annotation) and issubclass(annotation, BaseModel)
