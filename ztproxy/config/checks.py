"""Checks that span entries of the configuration, which no single field validator can see.

They run on the raw data parsed from YAML, not on validated models, so they also run
when some fields are invalid; they skip whatever pydantic already flagged (``flagged``
holds those paths) and never assume a shape they have not checked. Each returns issues
located with the document's YAML paths and lines:

- duplicate route names, two routes for the same host and path prefix;
- ``allow`` entries naming a policy not defined under ``policies``;
- policies naming other policies (nesting is not supported);
- TLS certificate and key files that cannot be read.
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

from ztproxy.errors import ConfigIssue

if TYPE_CHECKING:
    from ztproxy.config.source import Document, YamlPath

_TLS_FILES = {"cert_file": "the certificate", "key_file": "the private key"}


def run(document: Document, flagged: Collection[YamlPath]) -> list[ConfigIssue]:
    """Every cross-entry problem in ``document``, except at paths in ``flagged``."""
    data = document.data
    if not isinstance(data, dict):
        return []
    context = _Context(document, flagged)
    routes = [(index, route) for index, route in enumerate(_list(data.get("routes")))
              if isinstance(route, dict)]
    policies = data.get("policies", {})
    issues = [*_duplicate_names(context, routes), *_duplicate_targets(context, routes)]
    if isinstance(policies, dict):  # otherwise pydantic reports the shape of policies
        issues.extend(_unknown_policies(context, routes, policies))
        issues.extend(_nested_policies(context, policies))
    server = data.get("server")
    if isinstance(server, dict) and isinstance(server.get("tls"), dict):
        issues.extend(_tls_files(context, server["tls"]))
    return issues


class _Context:
    def __init__(self, document: Document, flagged: Collection[YamlPath]) -> None:
        self.document = document
        self.flagged = flagged

    def skip(self, path: YamlPath) -> bool:
        """True when pydantic reported a problem at or inside ``path``."""
        return any(found[: len(path)] == path for found in self.flagged)

    def issue(self, path: YamlPath, message: str) -> ConfigIssue:
        return self.document.issue(path, message)

    def line(self, path: YamlPath) -> int | None:
        return self.document.line(path)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _duplicate_names(context: _Context, routes: list[tuple[int, dict[Any, Any]]]) -> Iterator[ConfigIssue]:
    first: dict[str, int | None] = {}
    for index, route in routes:
        name, path = route.get("name"), ("routes", index, "name")
        if not isinstance(name, str) or context.skip(path):
            continue
        if name in first:
            yield context.issue(path, f"duplicate route name {name!r} (first at line {first[name]})")
        else:
            first[name] = context.line(path)


def _duplicate_targets(context: _Context, routes: list[tuple[int, dict[Any, Any]]]) -> Iterator[ConfigIssue]:
    first: dict[tuple[str | None, str], tuple[int | None, str]] = {}
    for index, route in routes:
        host, prefix = route.get("host"), route.get("path", "/")
        if context.skip(("routes", index, "host")) or context.skip(("routes", index, "path")):
            continue
        if not (host is None or isinstance(host, str)) or not isinstance(prefix, str):
            continue
        # Matching is case-insensitive and ignores a trailing dot; no host means any host.
        target = (host.strip().lower().rstrip(".") if host is not None else None, prefix)
        name = route.get("name")
        label = f"route {name!r}" if isinstance(name, str) else f"routes[{index}]"
        if target in first:
            line, earlier = first[target]
            where = f"host {target[0]!r}" if target[0] is not None else "any host"
            yield context.issue(("routes", index),
                                f"duplicate route for {where} and path {prefix!r} "
                                f"(first at line {line}, {earlier})")
        else:
            first[target] = (context.line(("routes", index)), label)


def _reference(entry: Any, path: YamlPath) -> tuple[str, YamlPath] | None:
    """The policy an ``allow`` entry names (``- employees`` or ``- policy: employees``)."""
    if isinstance(entry, str):
        return entry, path
    if isinstance(entry, dict) and isinstance(entry.get("policy"), str):
        return entry["policy"], (*path, "policy")
    return None


def _unknown_policies(context: _Context, routes: list[tuple[int, dict[Any, Any]]],
                      policies: dict[Any, Any]) -> Iterator[ConfigIssue]:
    defined = [name for name in policies if isinstance(name, str)]
    for index, route in routes:
        entries = [(kind, position, entry) for kind in ("allow", "deny")
                   for position, entry in enumerate(_list(route.get(kind)))]
        for kind, position, entry in entries:
            entry_path = ("routes", index, kind, position)
            found = _reference(entry, entry_path)
            if found is None or context.skip(entry_path) or found[0] in defined:
                continue
            name, path = found
            close = difflib.get_close_matches(name, defined, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ": define it under policies"
            yield context.issue(path, f"unknown policy {name!r}{hint}")


def _nested_policies(context: _Context, policies: dict[Any, Any]) -> Iterator[ConfigIssue]:
    for policy, rules in policies.items():
        for position, entry in enumerate(_list(rules)):
            entry_path = ("policies", policy, position)
            found = _reference(entry, entry_path)
            if found is None or context.skip(entry_path):
                continue
            name, path = found
            yield context.issue(path, f"policy {policy!r} names policy {name!r}: policies cannot contain "
                                      "other policies; copy its rules or list both in the route's allow")


def _tls_files(context: _Context, tls: dict[Any, Any]) -> Iterator[ConfigIssue]:
    for key, what in _TLS_FILES.items():
        path = ("server", "tls", key)
        filename = tls.get(key)
        if not isinstance(filename, str) or not filename or context.skip(path):
            continue
        problem = _unreadable(filename)
        if problem is not None:
            yield context.issue(path, f"cannot read {what} {filename!r}: {problem}")


def _unreadable(filename: str) -> str | None:
    """Why ``filename`` cannot be read as a regular file, or None when it can."""
    # stat rather than open: opening a FIFO for reading would block.
    try:
        mode = os.stat(filename).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return str(exc.strerror or exc).lower()
    except ValueError:  # a NUL byte in the name
        return "invalid file name"
    if stat.S_ISDIR(mode):
        return "it is a directory"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    if not os.access(filename, os.R_OK):
        return "permission denied"
    return None
