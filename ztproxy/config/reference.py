"""The configuration reference: one row per option of the schema, described by the example file.

:func:`options` walks :class:`~ztproxy.config.schema.Config` and its sections and yields the
dotted path (``server.limits.max_header_bytes``, ``routes[].allow``), the type, the default
and the description of every option; :func:`criteria` does the same for the rule language.
Types and defaults come from the schema, descriptions from the comments of
``config/example.yaml`` (:mod:`ztproxy.config.comments`), so the one hand-written text stays
in the example file. An option without a description raises :class:`MissingDescriptions`:
the reference cannot drift from the schema. :func:`markdown` renders the documentation page
(``docs/hooks.py`` calls it at build time). This module imports no aiohttp.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ztproxy.config import comments, rules, values
from ztproxy.config.comments import model_of
from ztproxy.config.rules import Rule
from ztproxy.config.schema import Config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.yaml"

# The value types of the schema, known by their validator, in the words the documentation uses.
VALUE_LABELS: dict[Callable[..., Any], str] = {
    values.parse_duration: "duration",
    values.parse_byte_size: "size",
    values._check_listen: "HOST:PORT",
    values._check_http_url: "URL",
    values._check_issuer_url: "URL",
    values._check_cidr: "CIDR",
    values._check_name: "name",
    values._check_method: "HTTP method",
    values._check_path_prefix: "path prefix",
    values._check_email_domain: "domain",
    values._check_clock: '"HH:MM"',
    values._check_weekday: "day",
    values._check_timezone: "time zone",
    values._check_os_version: "version",
    values._check_platform: "platform",
    values._check_claim_value: "string, number or boolean",
    rules._groups_list: "list of groups, or {any_of, all_of}",
    rules._scopes_list: "list of scopes, or {all_of, any_of}",
    rules._policy_reference: "rule or policy name",
}
_BINARY_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
_DURATION_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


class MissingDescriptions(Exception):
    """Options of the schema that ``config/example.yaml`` does not describe."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__("config/example.yaml has no comment above these options of the schema "
                         f"(add one, above the key or the commented-out key): {', '.join(paths)}")
        self.paths = paths


@dataclass(frozen=True)
class Option:
    """One row of the reference."""

    path: str  # server.limits.max_header_bytes, routes[].allow, device.min_score
    type: str  # duration, list of CIDR, "json" or "console", section...
    default: str  # as written in YAML; "required", or "" for a section
    description: str  # the example's comment, lines joined; indented lines kept on their own


def options(example: Path = EXAMPLE) -> list[Option]:
    """Every option of the configuration file, in the order of the schema."""
    found = comments.read(example.read_text(encoding="utf-8"), Config, leaves=(Rule,))
    described = dict(found.by_path)
    if "routes[].allow" in described:  # the criteria in it have rows of their own (criteria())
        _, rest = comments.rule_criteria(described["routes[].allow"], Rule)
        described["routes[].allow"] = [line.strip() for line in rest if not _is_heading(line)]
    rows = list(_rows(Config, "", described))
    missing = [row.path for row in rows if not row.description]
    if missing:
        raise MissingDescriptions(missing)
    return rows


def criteria(example: Path = EXAMPLE) -> list[Option]:
    """The criteria of an allow or deny rule: ``mfa``, ``device.min_score``..."""
    found = comments.read(example.read_text(encoding="utf-8"), Config, leaves=(Rule,))
    documented, _ = comments.rule_criteria(found.by_path.get("routes[].allow", []), Rule)
    by_path = {criterion.path: criterion for criterion in documented}
    rows: list[Option] = []
    missing: list[str] = []
    for path, annotation, default in _criterion_fields():
        criterion = by_path.get(path)
        if criterion is None or not criterion.description:
            missing.append(f"rule criterion {path}")
            continue
        description = _join(criterion.description).removesuffix(":")
        if criterion.example:
            description += ("" if description.endswith((".", "]")) else ".") + f" Example: `{criterion.example}`."
        rows.append(Option(path, type_label(annotation), yaml_default(default, annotation), description))
    if missing:
        raise MissingDescriptions(missing)
    return rows


def _criterion_fields() -> Iterator[tuple[str, Any, Any]]:
    for name, info in Rule.model_fields.items():
        yield name, field_type(info), info.default
        model, _ = model_of(info.annotation)
        if model is not None and name not in ("groups", "scopes"):  # a list, or its two keys, told in one line
            for inner, inner_info in model.model_fields.items():
                yield f"{name}.{inner}", field_type(inner_info), inner_info.default


def field_type(info: FieldInfo) -> Any:
    """A field's type with the validators pydantic moved out of it (they name ``Duration``...)."""
    return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


def _rows(model: type[BaseModel], prefix: str, described: dict[str, list[str]]) -> Iterator[Option]:
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        inner, is_list = model_of(info.annotation)
        annotation = field_type(info)
        default = "required" if info.is_required() else yaml_default(info.default, annotation)
        if inner is not None and inner is not Rule and not _label_of_validator(annotation):
            yield Option(path, "list of sections" if is_list else "section", "" if not is_list else default,
                         _join(described.get(path, [])))
            yield from _rows(inner, f"{path}[]" if is_list else path, described)
        else:
            yield Option(path, type_label(annotation), default, _join(described.get(path, [])))


def type_label(annotation: Any) -> str:
    """``tuple[Cidr, ...]`` -> ``list of CIDR``; ``Literal["json", "console"]`` -> ``"json" or "console"``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _label_of_validator(annotation) or type_label(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        labels = [type_label(argument) for argument in get_args(annotation) if argument is not type(None)]
        return " or ".join(labels)
    if origin is Literal:
        return " or ".join(f'"{value}"' for value in get_args(annotation))
    if origin in (tuple, list):
        return f"list of {type_label(get_args(annotation)[0])}"
    if origin is dict:
        key, value = get_args(annotation)
        return f"mapping of {type_label(key)} to {type_label(value)}"
    if annotation is Rule:
        return "rule"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(annotation, "any")


def _label_of_validator(annotation: Any) -> str | None:
    """The label of an ``Annotated`` type whose validator :data:`VALUE_LABELS` knows."""
    if get_origin(annotation) is not Annotated:
        return None
    for item in get_args(annotation)[1:]:
        function = getattr(item, "func", None)
        if function in VALUE_LABELS:
            return VALUE_LABELS[function]
    return None


def yaml_default(value: Any, annotation: Any) -> str:
    """A default as it would be written in the file: ``30s``, ``32KiB``, ``[openid, email]``, ``null``."""
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return ""
    label = type_label(annotation)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if label.startswith("duration") and isinstance(value, (int, float)):
        return format_duration(float(value))
    if label.startswith("size") and isinstance(value, int):
        return format_size(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(str(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {item}" for key, item in value.items()) + "}"
    return str(value)


def format_duration(seconds: float) -> str:
    """``43200`` -> ``12h``, ``90`` -> ``1m30s``, ``0.1`` -> ``100ms``."""
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole, text = int(seconds), ""
    for unit, size in _DURATION_UNITS:
        if whole >= size:
            text += f"{whole // size}{unit}"
            whole %= size
    return text or "0s"


def format_size(size: int) -> str:
    """``32768`` -> ``32KiB``; a size that is no whole number of a unit stays in bytes."""
    for unit, factor in _BINARY_UNITS:
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _is_heading(line: str) -> bool:
    """``Who:``: a line that introduced criteria the reference lists on their own."""
    return not line.startswith(" ") and line.rstrip().endswith(":")


def _join(lines: list[str]) -> str:
    """Comment lines as one text; an indented line (a table, an example) starts a line of its own."""
    text = ""
    for line in lines:
        if not line.strip():
            text += "\n\n"
        elif line.startswith(" ") or not text or text.endswith("\n"):
            text += ("\n" if text and not text.endswith("\n") else "") + line.strip()
        else:
            text += " " + line.strip()
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def markdown(example: Path = EXAMPLE) -> str:
    """The reference as Markdown: one table per section of the file, then the rule criteria."""
    rows = options(example)
    sections: dict[str, list[Option]] = {}
    for row in rows:
        sections.setdefault(re.split(r"[.\[]", row.path, maxsplit=1)[0], []).append(row)
    parts: list[str] = []
    for name, section in sections.items():
        head, *rest = section
        parts.append(f"## {name}\n\n{_cell_text(head.description, table=False)}\n")
        if head.type.startswith("list of sections"):
            parts.append(f"Type: list of sections. Default: `{head.default}`.\n")
        elif head.type not in ("section",):
            parts.append(f"Type: {head.type}. Default: `{head.default}`.\n")
        if rest:
            parts.append(_table(rest))
    parts.append("## Rule criteria\n\nThe keys of one rule in `routes[].allow`, `routes[].deny`, "
                 "`routes[].shadow` and `policies`; every criterion a rule names must hold. The word in "
                 "brackets is the reason a request that fails the criterion is refused with.\n")
    parts.append(_table(criteria(example)))
    return "\n".join(parts)


def _table(rows: list[Option]) -> str:
    lines = ["| option | type | default | description |", "| --- | --- | --- | --- |"]
    for row in rows:
        default = f"`{row.default}`" if row.default else ""
        lines.append(f"| `{row.path}` | {_cell_text(row.type)} | {default} | {_cell_text(row.description)} |")
    return "\n".join(lines) + "\n"


def _cell_text(text: str, *, table: bool = True) -> str:
    """Text for Markdown: characters that would start markup are escaped outside `code`."""
    pieces = re.split(r"(`[^`]*`)", text)
    escaped = "".join(piece if piece.startswith("`") and piece.endswith("`") and len(piece) > 1
                      else re.sub(r"([*_\\\[\]|])", r"\\\1", piece).replace("<", "&lt;").replace(">", "&gt;")
                      for piece in pieces)
    if table:
        return escaped.replace("\n\n", "<br><br>").replace("\n", "<br>")
    return escaped.replace("\n", "  \n")
