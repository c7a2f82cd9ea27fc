"""The one resolver of import strings (``ztproxy.imports``): what it finds and how it refuses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ztproxy.imports import ImportStringError, is_import_string, resolve
from ztproxy.sessions.memory import MemoryStore

NESTED_HOLDER = type("NestedHolder", (), {"value": 7})


def test_resolves_a_class_and_a_dotted_attribute() -> None:
    assert resolve("ztproxy.sessions.memory:MemoryStore") is MemoryStore
    assert resolve("ztproxy.sessions.memory:MemoryStore.open") == MemoryStore.open
    assert resolve(f"{__name__}:NESTED_HOLDER.value") == 7


@pytest.mark.parametrize("text", ["pkg.mod:Class", "a:b", "_p.m_2:C.attr"])
def test_import_string_syntax(text: str) -> None:
    assert is_import_string(text)


@pytest.mark.parametrize("text", ["", "nope", "pkg.mod", ":Class", "pkg.mod:", "pkg mod:C", "1pkg:C", "a:b:c"])
def test_not_an_import_string(text: str) -> None:
    assert not is_import_string(text)


@pytest.mark.parametrize(("target", "what", "message"), [
    ("nope", "provider", "invalid provider 'nope': expected an import string package.module:Class"),
    ("nope", "import string", "invalid import string 'nope': expected an import string package.module:Class"),
    ("no_such_module_xyz:Thing", "provider",
     "cannot import 'no_such_module_xyz': ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    (f"{__name__}:Missing", "provider", f"module '{__name__}' has no 'Missing'"),
    (f"{__name__}:NESTED_HOLDER.missing", "provider", f"module '{__name__}' has no 'NESTED_HOLDER.missing'"),
])
def test_refusals_are_value_errors_fit_for_an_operator(target: str, what: str, message: str) -> None:
    with pytest.raises(ImportStringError, match=f"^{re.escape(message)}$"):
        resolve(target, what=what)
    assert issubclass(ImportStringError, ValueError)


def test_a_module_failing_at_import_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "ztproxy_broken_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(ImportStringError, match="cannot import 'ztproxy_broken_plugin': RuntimeError: boom at import"):
        resolve("ztproxy_broken_plugin:Thing")
