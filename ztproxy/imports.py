"""The one resolver of import strings: ``"package.module:Class"`` -> the object it names.

Swappable parts (session stores, posture providers) are chosen in the config by a short
name from a registry of import strings, or by an import string of the operator's own
(STYLE 5, 22). Everything that turns such a string into an object comes here, so the
syntax and the error messages are the same everywhere. :class:`ImportStringError` is a
``ValueError``: a pydantic validator that lets it through reports it at its YAML path.
No aiohttp.
"""

from __future__ import annotations

import importlib
import re

_IMPORT_STRING_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class ImportStringError(ValueError):
    """An import string that names nothing: malformed, not importable, or no such attribute."""


def is_import_string(text: str) -> bool:
    """Whether ``text`` is written ``package.module:attribute`` (the attribute may be dotted)."""
    return _IMPORT_STRING_RE.fullmatch(text) is not None


def resolve(target: str, *, what: str = "import string") -> object:
    """The object ``target`` (``package.module:attribute``) names, importing its module.

    ``what`` names the thing in the message for a malformed string (``"provider"``). The
    module's own errors at import time are reported too, never raised as they are.
    """
    if not is_import_string(target):
        raise ImportStringError(f"invalid {what} {target!r}: expected an import string package.module:Class")
    module_name, _, attribute = target.partition(":")
    try:
        found: object = importlib.import_module(module_name)
    except Exception as exc:
        raise ImportStringError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ImportStringError(f"module {module_name!r} has no {attribute!r}") from None
    return found
