"""Loading a configuration file: YAML with line numbers, ``${ENV}`` substitution, validation.

:func:`load` and :func:`load_text` return a validated :class:`~ztproxy.config.schema.Config`
or raise one :class:`~ztproxy.errors.ConfigError` carrying every problem found, each with
its YAML path (``routes[2].upstream``) and line. The stages, each collecting issues:

1. YAML is composed into nodes with PyYAML's safe loader and turned into plain data by
   :class:`_Builder`, which remembers the line of every path, refuses duplicate keys,
   applies merge keys (``<<``) and substitutes ``${VAR}`` / ``${VAR:-default}`` in
   string values (``$${`` is a literal ``${``; results are never re-parsed as YAML).
2. :meth:`Config.model_validate` checks every field; its errors are translated into
   plain words located in the file.
3. :func:`ztproxy.config.checks.run` checks what spans entries, on the raw data.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import re
import types
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ztproxy.config import checks
from ztproxy.config.schema import Config, Rule
from ztproxy.errors import ConfigError, ConfigIssue

YamlPath = tuple[Any, ...]
"""Mapping keys and list indices from the top of the document: ``("routes", 2, "upstream")``."""

# Aliases make a small file expand into a huge tree ("billion laughs"); refuse past this.
MAX_NODES = 100_000

_STR_TAG = "tag:yaml.org,2002:str"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"
_MERGE_TAG = "tag:yaml.org,2002:merge"

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)(\}?)")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Loc parts pydantic adds for validators and unions, which are not keys of the document.
_WRAPPER_PART = re.compile(r"\[key\]|[a-z-]+\[.*\]|[A-Z][A-Za-z0-9]*")
# The messages of the schema's ``*_file`` handling name the key they are about.
_FILE_KEY_MESSAGES = (
    re.compile(r"(?P<key>\w+_file): (?P<message>.+)", re.DOTALL),
    re.compile(r"(?P<message>give either \w+ or (?P<key>\w+_file), not both)"),
)


@dataclass(frozen=True)
class Document:
    """Plain data parsed from YAML, with the 1-based line of every path in it."""

    data: Any
    lines: Mapping[YamlPath, int]

    def line(self, path: YamlPath) -> int | None:
        """The line of the deepest node on ``path`` that exists in the document."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def render(self, path: YamlPath) -> str:
        """``("routes", 2, "upstream")`` -> ``routes[2].upstream``."""
        text = ""
        node = self.data
        for part in path:
            if isinstance(node, list) and isinstance(part, int) and not isinstance(part, bool):
                text += f"[{part}]"
                node = node[part] if 0 <= part < len(node) else None
                continue
            key = str(part)
            if _PLAIN_KEY.fullmatch(key):
                text += f".{key}" if text else key
            else:
                text += f"[{json.dumps(key)}]"
            node = node.get(part) if isinstance(node, dict) else None
        return text

    def issue(self, path: YamlPath, message: str, *, line: int | None = None) -> ConfigIssue:
        return ConfigIssue(self.render(path), message, self.line(path) if line is None else line)


def load(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate a configuration file (``env`` defaults to ``os.environ``)."""
    source = os.fspath(path)
    try:
        raw = Path(source).read_bytes()
    except FileNotFoundError:
        raise _fail("file not found", source) from None
    except IsADirectoryError:
        raise _fail("this is a directory, expected a YAML file", source) from None
    except PermissionError:
        raise _fail("cannot read the file: permission denied", source) from None
    except OSError as exc:
        raise _fail(f"cannot read the file: {exc.strerror or exc}", source) from None
    except ValueError:  # e.g. a NUL byte in the name
        raise _fail("invalid file name", source) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"the file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        raise _fail(message, source, line) from None
    return load_text(text, source, env=env)


def load_text(text: str, source: str = "<string>", *, env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate configuration text; ``source`` names it in error messages."""
    builder = _Builder(os.environ if env is None else env)
    document = builder.parse(text)
    issues = [document.issue(path, message, line=line) for path, message, line in builder.issues]
    if not isinstance(document.data, dict):
        if document.data is not None or not issues:
            kind = _yaml_kind(document.data)
            issues.append(document.issue((), "the top level must be a mapping of sections "
                                             f"(server, logging, policies, routes), not {kind}"))
        raise ConfigError(issues, source)
    config, invalid, flagged = _validate(document, builder.tainted)
    issues.extend(invalid)
    issues.extend(checks.run(document, flagged))
    if issues or config is None:
        raise ConfigError(issues, source)
    return config


def _fail(message: str, source: str, line: int | None = None) -> ConfigError:
    return ConfigError([ConfigIssue("", message, line)], source)


class _TooLarge(Exception):
    pass


class _Builder:
    """YAML nodes -> plain data, a line for every path, and the issues met on the way."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.lines: dict[YamlPath, int] = {}
        self.issues: list[tuple[YamlPath, str, int]] = []
        self.tainted: set[YamlPath] = set()  # values replaced by a placeholder after an issue
        self._constructor = yaml.constructor.SafeConstructor()
        self._budget = MAX_NODES
        self._active: set[int] = set()
        self._reported: set[tuple[int, str]] = set()

    def parse(self, text: str) -> Document:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            self.issues.append(((), *_syntax_issue(exc)))
            return Document(None, self.lines)
        except yaml.YAMLError as exc:  # ReaderError: a character YAML does not allow
            self.issues.append(((), *_reader_issue(exc, text)))
            return Document(None, self.lines)
        except RecursionError:
            self.issues.append(((), "the document is nested too deeply", 1))
            return Document(None, self.lines)
        if root is None:
            self.issues.append(((), "the configuration is empty: it needs at least a routes section", 1))
            return Document(None, self.lines)
        self.lines[()] = _line(root)
        try:
            data = self._value(root, ())
        except _TooLarge:
            message = f"the document is too large: more than {MAX_NODES} values once aliases are expanded"
            self.issues.append(((), message, _line(root)))
            return Document(None, self.lines)
        except RecursionError:
            self.issues.append(((), "the document is nested too deeply", _line(root)))
            return Document(None, self.lines)
        return Document(data, self.lines)

    def _report(self, node: yaml.Node, path: YamlPath, message: str, line: int | None = None) -> None:
        # A node reached through several aliases is reported once, where it is met first.
        if (id(node), message) not in self._reported:
            self._reported.add((id(node), message))
            self.issues.append((path, message, _line(node) if line is None else line))

    def _spend(self) -> None:
        self._budget -= 1
        if self._budget < 0:
            raise _TooLarge

    def _value(self, node: yaml.Node, path: YamlPath) -> Any:
        self._spend()
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._active:
            self._report(node, path, "recursive alias: a node cannot contain itself")
            self.tainted.add(path)
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
                items = []
                for index, item in enumerate(node.value):
                    self.lines[(*path, index)] = _line(item)
                    items.append(self._value(item, (*path, index)))
                return items
            if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
                mapping = {}
                for key, line, value in self._entries(node, path):
                    self.lines[(*path, key)] = line
                    mapping[key] = self._value(value, (*path, key))
                return mapping
            self._report(node, path, f"unsupported YAML tag {node.tag!r}")
            self.tainted.add(path)
            return None
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: YamlPath) -> Any:
        if node.tag == _STR_TAG:
            value, problems = substitute(node.value, self.env)
            for problem in problems:
                self._report(node, path, problem)
            if problems:
                self.tainted.add(path)
            return value
        try:
            return self._constructor.construct_object(node)
        # PyYAML's constructors raise assorted exceptions for explicitly tagged junk
        # ("!!int abc", "!!timestamp x") and ConstructorError for unknown tags.
        except Exception:
            self._report(node, path, f"unsupported YAML tag {node.tag!r} or invalid value for it")
            self.tainted.add(path)
            return None

    def _entries(self, node: yaml.MappingNode, path: YamlPath) -> list[tuple[Any, int, yaml.Node]]:
        """(key, line, value node) of a mapping, merge keys applied; explicit keys win."""
        self._spend()
        entries: list[tuple[Any, int, yaml.Node]] = []
        first: dict[Any, int] = {}
        merges: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append((key_node, value_node))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._report(key_node, path, "a mapping key must be a plain value, not a list or mapping")
                continue
            key = key_node.value if key_node.tag == _STR_TAG else self._scalar(key_node, path)
            line = _line(key_node)
            if key in first:
                self._report(key_node, (*path, key), f"duplicate key {key!r} (first at line {first[key]})")
                continue
            first[key] = line
            entries.append((key, line, value_node))
        for key_node, value_node in merges:
            sources = self._merge_sources(value_node)
            if sources is None:
                self._report(key_node, path, "a merge key (<<) takes a mapping or a list of mappings, "
                                             "e.g. <<: *defaults")
                continue
            for source in sources:
                if id(source) in self._active:  # merging itself or a mapping that holds it
                    self._report(key_node, path, "recursive merge: a mapping cannot merge itself")
                    continue
                self._active.add(id(source))
                try:
                    merged = self._entries(source, path)
                finally:
                    self._active.discard(id(source))
                for key, line, value in merged:
                    if key not in first:  # YAML merge: the mapping's own keys, then earlier sources, win
                        first[key] = line
                        entries.append((key, line, value))
        return entries

    @staticmethod
    def _merge_sources(node: yaml.Node) -> list[yaml.MappingNode] | None:
        if isinstance(node, yaml.MappingNode):
            return [node]
        if isinstance(node, yaml.SequenceNode) and all(isinstance(n, yaml.MappingNode) for n in node.value):
            return list(node.value)
        return None


def substitute(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$${`` in ``text``; also return the problems."""
    if "${" not in text:
        return text, []
    problems: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        body, closed = match.group(1), match.group(2)
        if not closed:
            problems.append("unterminated '${': close it with '}', or write '$${' for a literal '${'")
            return match.group(0)
        variable = _VARIABLE.fullmatch(body)
        if variable is None or "${" in (variable.group(2) or ""):
            problems.append(f"invalid reference '${{{body}}}': expected ${{NAME}} or ${{NAME:-default}} "
                            "(write '$${' for a literal '${')")
            return match.group(0)
        name, default = variable.group(1), variable.group(2)
        value = env.get(name)
        if default is not None:
            return value or default  # as in the shell, ":-" also replaces an empty value
        if value is None:
            problems.append(f"environment variable '{name}' is not set")
            return ""
        return value

    return _REFERENCE.sub(replace, text), problems


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _syntax_issue(exc: yaml.MarkedYAMLError) -> tuple[str, int]:
    mark = exc.problem_mark or exc.context_mark
    message = "invalid YAML: "
    if exc.context:
        message += exc.context
        if exc.context_mark is not None:
            message += f" at line {exc.context_mark.line + 1}"
        message += ": "
    message += exc.problem or "syntax error"
    if mark is not None:
        message += f" (column {mark.column + 1})"
    return message, (mark.line + 1 if mark is not None else 1)


def _reader_issue(exc: yaml.YAMLError, text: str) -> tuple[str, int]:
    position = getattr(exc, "position", 0)
    character = getattr(exc, "character", None)
    line = text.count("\n", 0, position) + 1 if isinstance(position, int) else 1
    what = f"character #x{character:04x}" if isinstance(character, int) else "a character"
    return f"invalid YAML: {what} is not allowed in a YAML file", line


def _validate(document: Document, tainted: Collection[YamlPath],
               ) -> tuple[Config | None, list[ConfigIssue], set[YamlPath]]:
    """Validate with pydantic: the config, or its errors as issues and the paths they are at."""
    try:
        return Config.model_validate(document.data), [], set()
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    issues: list[ConfigIssue] = []
    paths = [_document_path(error["loc"], document.data) for error in errors]
    for error, path in zip(errors, paths, strict=True):
        if any(path[: len(t)] == t for t in tainted):
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
            node = _at(node, (part,))
        elif isinstance(part, str) and _WRAPPER_PART.fullmatch(part):
            continue
        else:
            node = None
        path.append(part)
    return tuple(path)


def _translate(error: ErrorDetails, path: YamlPath, document: Document) -> ConfigIssue:
    kind = error["type"]
    if kind == "missing" and path:
        return document.issue(path[:-1], f"missing required key {path[-1]!r}")
    if kind == "extra_forbidden" and path:
        return document.issue(path, f"unknown key {path[-1]!r}{_suggestion(path)}")
    message = _plain_message(error)
    if error["type"] == "model_type" and _model_at(path) is Rule:
        message = f"expected a rule such as {{public: true}} or a policy name, got {_yaml_kind(error['input'])}"
    for pattern in _FILE_KEY_MESSAGES:
        match = pattern.fullmatch(message)
        node = _at(document.data, path)
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
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
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
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
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
