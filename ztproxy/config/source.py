"""Reading a configuration file into plain data: what the file says, and where.

:func:`read_file` returns a file's text; :func:`parse` composes the text into nodes with
PyYAML's safe loader and turns them into plain data, remembering the line of every path
(``routes[2].upstream``). On the way it refuses duplicate keys, applies merge keys (``<<``),
substitutes ``${VAR}`` / ``${VAR:-default}`` in string values (``$${`` is a literal ``${``;
results are never re-parsed as YAML) and stops at recursive aliases, alias bombs and deep
nesting, collecting every problem met. Nothing here knows the schema; validation is
:mod:`ztproxy.config.loader`'s job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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
        """An issue at ``path``, located at the line of ``path`` unless ``line`` is given."""
        return ConfigIssue(self.render(path), message, self.line(path) if line is None else line)


@dataclass(frozen=True)
class Parsed:
    """What :func:`parse` found in a text."""

    document: Document
    issues: tuple[ConfigIssue, ...]
    """Problems met while parsing; ``document.data`` is None when the text could not be read."""
    placeholders: frozenset[YamlPath]
    """Paths whose value is a stand-in left after an issue there, so not worth validating."""


def read_file(source: str) -> str:
    """The text of the file at ``source``, or a :class:`ConfigError` saying why it cannot be read."""
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
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"the file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        raise _fail(message, source, line) from None


def parse(text: str, env: Mapping[str, str]) -> Parsed:
    """Compose ``text`` into a :class:`Document`, substituting variables from ``env``."""
    builder = _Builder(env)
    document = builder.build(text)
    # Rendered only now: a path's format depends on the final data (a list index or a key).
    issues = tuple(document.issue(path, message, line=line) for path, message, line in builder.issues)
    return Parsed(document, issues, frozenset(builder.placeholders))


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
        self.placeholders: set[YamlPath] = set()
        self._constructor = yaml.constructor.SafeConstructor()
        self._budget = MAX_NODES
        self._active: set[int] = set()
        self._reported: set[tuple[int, str]] = set()

    def build(self, text: str) -> Document:
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

    def _report(self, node: yaml.Node, path: YamlPath, message: str) -> None:
        # A node reached through several aliases is reported once, where it is met first.
        if (id(node), message) not in self._reported:
            self._reported.add((id(node), message))
            self.issues.append((path, message, _line(node)))

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
            self.placeholders.add(path)
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
            self.placeholders.add(path)
            return None
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: YamlPath) -> Any:
        if node.tag == _STR_TAG:
            value, problems = substitute(node.value, self.env)
            for problem in problems:
                self._report(node, path, problem)
            if problems:
                self.placeholders.add(path)
            return value
        try:
            return self._constructor.construct_object(node)
        # PyYAML's constructors raise assorted exceptions for explicitly tagged junk
        # ("!!int abc", "!!timestamp x") and ConstructorError for unknown tags.
        except Exception:
            self._report(node, path, f"unsupported YAML tag {node.tag!r} or invalid value for it")
            self.placeholders.add(path)
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
            sources = _merge_sources(value_node)
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


def _merge_sources(node: yaml.Node) -> list[yaml.MappingNode] | None:
    """The mappings a merge key's value names, or None when it names something else."""
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
