"""The criteria registry: one criterion per rule field, one sentence per reason."""

from __future__ import annotations

import pytest

from ztproxy.config.rules import DeviceRequirement, Rule
from ztproxy.policy.compile import criteria_of
from ztproxy.policy.criteria import Groups, Public, registry
from ztproxy.policy.reasons import DENY_REASONS, GROUP_MISSING


def test_every_rule_field_is_a_registered_criterion() -> None:
    sections = {"device": DeviceRequirement}  # a criterion per condition
    fields = {f"{name}.{inner}" for name, model in sections.items() for inner in model.model_fields}
    fields |= set(Rule.model_fields) - set(sections) - {"policy"}  # a reference, expanded before compiling
    assert set(registry.CRITERIA) == fields


def test_every_deny_reason_has_a_sentence() -> None:
    assert set(registry.SENTENCES) == set(DENY_REASONS)


def test_a_given_field_without_a_criterion_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(registry.CRITERIA, "methods")
    with pytest.raises(ValueError, match="methods: no criterion is registered"):
        list(criteria_of(Rule.model_validate({"methods": ["GET"]})))


def test_a_criterion_registers_once_and_a_reason_has_one_sentence() -> None:
    with pytest.raises(ValueError, match="'groups' is registered twice"):
        registry.register(Groups.name, Groups.of, {})
    with pytest.raises(ValueError, match="'group-missing' has two sentences"):
        registry.register("new", lambda _: Public(), {GROUP_MISSING: "Another sentence."})
    assert "new" not in registry.CRITERIA
    assert registry.SENTENCES[GROUP_MISSING] != "Another sentence."
