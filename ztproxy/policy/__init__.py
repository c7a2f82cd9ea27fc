"""The policy decision point: default deny, compiled at config load, evaluated without I/O.

A route allows a request when one of its ``allow`` rules holds and none of its ``deny``
rules does; a rule holds when every criterion in it holds. Every decision names its
reasons (:mod:`ztproxy.policy.reasons`) for the audit log and the deny page.

- :mod:`~ztproxy.policy.model`: facts (``RequestFacts``, ``Identity``, ``Device``) and
  decisions (``Decision``, ``Outcome``, ``StepUp``);
- :mod:`~ztproxy.policy.criteria`: one small predicate per criterion, each registered with the
  rule field it is built from and the deny page's sentences for its reasons;
- :mod:`~ztproxy.policy.compile`: rules -> ``RoutePolicy`` at config load, ``policy_hash``;
- :mod:`~ztproxy.policy.evaluate`: ``evaluate(policy, facts) -> Decision``;
- :mod:`~ztproxy.policy.refusal`: ``explain_refusal(decision)``, the deny page's sentences;
- :mod:`~ztproxy.policy.suite` and :mod:`~ztproxy.policy.breakdown`: ``ztproxy policy test``,
  ``diff`` and ``explain``.

This package imports no aiohttp and never reads the clock: ``now`` is one of the facts.
"""

from __future__ import annotations

from ztproxy.policy.compile import compile_route_policy, names_services, policy_hash
from ztproxy.policy.evaluate import evaluate
from ztproxy.policy.model import (
    CompiledRule,
    Criterion,
    Decision,
    Device,
    Identity,
    Outcome,
    RequestFacts,
    RoutePolicy,
    Service,
    StepUp,
)
from ztproxy.policy.refusal import explain_refusal

__all__ = [
    "CompiledRule",
    "Criterion",
    "Decision",
    "Device",
    "Identity",
    "Outcome",
    "RequestFacts",
    "RoutePolicy",
    "Service",
    "StepUp",
    "compile_route_policy",
    "evaluate",
    "explain_refusal",
    "names_services",
    "policy_hash",
]
