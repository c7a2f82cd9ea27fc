"""The comments of ``config/example.yaml``: what each option says about itself.

The example file documents every option in a comment above its key, and that comment is the
one hand-written description the reference (:mod:`ztproxy.config.reference`) shows. This
module reads those comments, guided by the schema so that a key is known wherever it is
written: as a key, or commented out (``# admin_token: ...``, a whole ``# tls:`` block whose
lines are comments again). Keys written one after another without a comment of their own
share the comment above the first (``cert_file`` and ``key_file``), and a key shown as an
example inside another's comment (``jwks_url`` under ``public_key``) shares that comment.
The rule language, documented as one block above ``routes[].allow``, is read by
:func:`rule_criteria`. This module imports no aiohttp.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass, field
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

_KEY = re.compile(r"(?P<dash>- )?(?P<key>[a-z_][a-z0-9_]*):(?: |$)")
_EXAMPLE_KEY = re.compile(r" +(?P<key>[a-z_][a-z0-9_]*):")
_CRITERION = re.compile(r"(?P<indent> +)(?P<key>[a-z_][a-z0-9_]*):(?P<rest>.*)")


@dataclass
class _Frame:
    indent: int
    path: str
    model: type[BaseModel] | None  # None: what is below is data (policy names, rules), not options


@dataclass
class Comments:
    """Dotted option path (``server.limits.max_header_bytes``, ``routes[].allow``) -> comment lines.

    A comment line keeps its indentation relative to the comment (``"  drop-all  drop..."``).
    """

    by_path: dict[str, list[str]] = field(default_factory=dict)


def model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The config model an annotation holds, and whether it is a list of them.

    ``LimitsConfig``, ``TlsConfig | None`` -> (model, False); ``tuple[RouteConfig, ...]`` ->
    (model, True); anything else, mappings included, -> (None, False).
    """
    origin = get_origin(annotation)
    if origin is Annotated:
        return model_of(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        for argument in get_args(annotation):
            if argument is not type(None):
                return model_of(argument)
    if origin in (tuple, list):
        inner, _ = model_of(get_args(annotation)[0])
        return inner, inner is not None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def read(text: str, root: type[BaseModel], leaves: tuple[type[BaseModel], ...] = ()) -> Comments:
    """The comment above every option of ``root`` found in ``text``; models in ``leaves`` are not entered."""
    comments = Comments()
    frames = [_Frame(-1, "", root)]
    pending: list[str] = []  # the comment lines since the last key or blank line
    last_key: str | None = None  # the option on the line just before, for keys sharing a comment
    uncomment_at: int | None = None  # inside a commented-out block whose key is at this column

    def key_line(indent: int, key: str) -> None:
        nonlocal pending, last_key
        while frames[-1].indent >= indent:
            frames.pop()
        frame = frames[-1]
        fields = frame.model.model_fields if frame.model is not None else {}
        name = key if key in fields else key.removesuffix("_file")
        if name not in fields:
            pending, last_key = [], None
            return
        path = f"{frame.path}.{name}" if frame.path else name
        if pending and path not in comments.by_path:
            comments.by_path[path] = pending
            for line in pending:  # a sibling shown as an example inside this comment shares it
                match = _EXAMPLE_KEY.match(line)
                if match and match["key"] in fields and match["key"] != name:
                    comments.by_path.setdefault(f"{frame.path}.{match['key']}".lstrip("."), pending)
        elif not pending and last_key is not None and path not in comments.by_path:
            sibling = last_key.rpartition(".")[0]
            if sibling == path.rpartition(".")[0] and last_key in comments.by_path:
                comments.by_path[path] = comments.by_path[last_key]
        pending, last_key = [], path
        model, is_list = model_of(fields[name].annotation)
        if model is not None and model not in leaves:
            frames.append(_Frame(indent, f"{path}[]" if is_list else path, model))
        else:
            frames.append(_Frame(indent, path, None))

    def line(raw: str) -> None:
        nonlocal pending, last_key, uncomment_at
        stripped = raw.lstrip(" ")
        indent = len(raw) - len(stripped)
        if not stripped:
            pending, last_key, uncomment_at = [], None, None
            return
        if stripped.startswith("#"):
            text = stripped[1:]
            text = text[1:] if text.startswith(" ") else text
            if uncomment_at == indent and text.startswith("  "):
                line(" " * indent + text)  # a line of a commented-out block, as if it were written
                uncomment_at = indent
                return
            uncomment_at = None
            match = _KEY.match(text)
            frame = next(f for f in reversed(frames) if f.indent < indent)
            if match and not match["dash"] and frame.model is not None and \
                    (match["key"] in frame.model.model_fields
                     or match["key"].removesuffix("_file") in frame.model.model_fields):
                key_line(indent, match["key"])  # a commented-out key: documented all the same
                uncomment_at = indent
                return
            pending.append(text)
            last_key = None
            return
        uncomment_at = None
        match = _KEY.match(stripped)
        if match is None:
            return  # a list item of plain values, a continued flow value
        key_indent = indent + (2 if match["dash"] else 0)
        if match["dash"]:
            while frames[-1].indent >= key_indent:
                frames.pop()
        key_line(key_indent, match["key"])

    for raw in text.splitlines():
        line(raw.rstrip())
    return comments


@dataclass(frozen=True)
class Criterion:
    """One criterion of the rule language: ``device.min_score``, an example, its description."""

    path: str
    example: str
    description: list[str]


def rule_criteria(lines: list[str], rule: type[BaseModel]) -> tuple[list[Criterion], list[str]]:
    """The criteria documented in the comment above ``allow``, and the rest of that comment.

    A criterion is a line ``  NAME: EXAMPLE  DESCRIPTION`` (two spaces or more before the
    description), continued by more deeply indented lines; a criterion of a nested model
    (``device``) has its own criteria two spaces further in. A name written twice gives two
    examples (``groups``).
    """
    criteria: dict[str, tuple[list[str], list[str]]] = {}
    rest: list[str] = []
    current: list[str] | None = None
    current_indent = 0
    parent: tuple[str, type[BaseModel]] | None = None
    for text in lines:
        indent = len(text) - len(text.lstrip(" "))
        match = _CRITERION.fullmatch(text)
        fields: dict[str, Any] = {}
        if match and indent == 2:
            fields = dict(rule.model_fields)
        elif match and indent == 4 and parent is not None:
            fields = dict(parent[1].model_fields)
        if match and match["key"] in fields:
            name = match["key"]
            path = f"{parent[0]}.{name}" if indent == 4 and parent is not None else name
            example, description = _split_columns(match["rest"])
            examples, current = criteria.setdefault(path, ([], []))
            if example:
                examples.append(example)
            if description:
                current.append(description)
            current_indent = indent
            if indent == 2:
                model, _ = model_of(fields[name].annotation)
                parent = (name, model) if model is not None else None
            continue
        if current is not None and indent > current_indent:
            current.append(text.strip())
            continue
        current = None
        rest.append(text)
    found = [Criterion(path, " or ".join(examples), description)
             for path, (examples, description) in criteria.items()]
    return found, rest


def _split_columns(rest: str) -> tuple[str, str]:
    """``" [GET, HEAD]  the request method..."`` -> (example, description): two spaces part them."""
    if rest.startswith("  "):
        return "", rest.strip()
    example, _, description = rest.strip().partition("  ")
    return example.strip(), description.strip()
