"""``ztproxy policy explain``: why a configuration decides what it does for one request.

:func:`decide` routes a request's facts as the proxy would and evaluates the route's policy,
noting which rules :func:`~ztproxy.policy.evaluate` looked at (for test coverage);
:func:`rule_by_rule` also evaluates every rule of that route criterion by criterion, allow and
deny rules both, in plain lines for people (the deny page's sentences for a refusal are
:func:`~ztproxy.policy.refusal.explain_refusal`). Pure: the facts carry the clock.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ztproxy.config.risk import RiskConfig
from ztproxy.config.schema import Config
from ztproxy.context import compile_routes
from ztproxy.policy.evaluate import evaluate
from ztproxy.policy.model import CompiledRule, Decision, RequestFacts, RoutePolicy
from ztproxy.risk.enforce import enforce
from ztproxy.risk.engine import Verdict
from ztproxy.risk.explain import SessionContext, verdict_for
from ztproxy.risk.words import sentence
from ztproxy.routing import RouteTable

NO_ROUTE = "no-route"  # the decision of a request no route matches (the proxy answers 404)


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """What a configuration decides for one request."""

    route: str | None  # None: no route matches
    decision: Decision | None  # None when there is no route
    evaluated: tuple[str, ...] = ()  # labels of the rules looked at (the deciding one included)
    risk: Verdict | None = None  # the session's, when the case describes its context

    @property
    def verdict(self) -> str:
        return NO_ROUTE if self.decision is None else self.decision.outcome.value

    @property
    def reasons(self) -> tuple[str, ...]:
        return () if self.decision is None else self.decision.reasons


def decide(routes: RouteTable[Any], host: str | None, facts: RequestFacts, session: SessionContext | None = None,
           risk: RiskConfig | None = None, grants: frozenset[str] = frozenset()) -> RouteDecision:
    """Route and decide as the proxy would (``routes``: a ``compile_routes`` table).

    ``session``: the session's context, judged with ``risk`` (default: the default risk section);
    ``grants``: the routes the user holds an approved, unexpired grant for.
    """
    route = routes.match(host, facts.path)
    if route is None:
        return RouteDecision(route=None, decision=None)
    facts = with_grants(facts, str(route.name), grants)
    policy: RoutePolicy = route.policy
    verdict = None
    if session is not None and facts.identity is not None:
        verdict = verdict_for(session, risk or RiskConfig(), route.config.risk, policy, facts.now.timestamp())
        facts = dataclasses.replace(facts, risk=verdict.level)
    return RouteDecision(route=str(route.name), decision=enforce(verdict, evaluate(policy, facts)),
                         evaluated=evaluated_rules(policy, facts), risk=verdict)


def with_grants(facts: RequestFacts, route: str, grants: frozenset[str]) -> RequestFacts:
    """The facts on ``route`` of a user holding grants for ``grants`` (only people hold grants)."""
    granted = facts.identity is not None and route in grants
    return dataclasses.replace(facts, granted=True) if granted and not facts.granted else facts


def evaluated_rules(policy: RoutePolicy, facts: RequestFacts) -> tuple[str, ...]:
    """The labels of the rules ``evaluate`` looks at, in its order, up to the deciding one."""
    if policy.constant is not None:
        return (policy.constant.rule,) if policy.constant.rule is not None else ()
    labels = []
    for rule in policy.deny:
        labels.append(rule.label)
        if rule.holds(facts):
            return tuple(labels)
    for rule in policy.allow:
        labels.append(rule.label)
        if rule.holds(facts):
            break
    return tuple(labels)


def criterion_results(rule: CompiledRule, facts: RequestFacts) -> list[tuple[str, str | None]]:
    """Each criterion of a rule as written, with None when it holds or the reason it fails."""
    return [(criterion.name, criterion(facts)) for criterion in rule.criteria]


def rule_by_rule(config: Config, host: str | None, facts: RequestFacts,
                 session: SessionContext | None = None, grants: frozenset[str] = frozenset()) -> list[str]:
    """The route, the session's risk, the decision with its reasons, and every rule criterion by criterion."""
    routes = compile_routes(config)
    lines = [f"request: {facts.method} {host or '-'} {facts.path} from {facts.client_ip} at {facts.now.isoformat()}"]
    outcome = decide(routes, host, facts, session, config.risk, grants)
    route = routes.match(host, facts.path)
    if route is None or outcome.decision is None:
        return [*lines, "route: none", f"decision: {NO_ROUTE}"]
    facts = with_grants(facts, route.name, grants)
    if facts.granted:
        lines.append(f"grant: held for {route.name}")
    policy: RoutePolicy = route.policy
    decision = outcome.decision
    lines.append(f"route: {route.name}")
    if outcome.risk is not None:
        verdict = outcome.risk
        facts = dataclasses.replace(facts, risk=verdict.level)
        signals = ", ".join(f"{noted.signal} -> {noted.action}" for noted in verdict.detected) or "none"
        lines.append(f"risk: {verdict.level} (signals: {signals})")
        if verdict.action is not None and verdict.signal is not None:
            lines.append(f"  {sentence(verdict.signal, verdict.action)}")
    decided_by = f" by {decision.rule}" if decision.rule else ""
    lines += [f"decision: {decision.outcome.value}{decided_by} ({', '.join(decision.reasons)})", "rules:"]
    if not policy.allow:
        lines.append("  (no allow rule: everyone is refused)")
    for rule in (*policy.deny, *policy.allow):
        results = criterion_results(rule, facts)
        holds = all(reason is None for _, reason in results)
        lines.append(f"  {rule.label}: {'holds' if holds else 'does not hold'}")
        lines.extend(f"    {name}: {'holds' if reason is None else f'fails: {reason}'}" for name, reason in results)
    return lines
