"""Typed keys for what the app shares (AppKey), and the one record a request carries (``RECORD``).

Every fact a request gathers on its way lives in its ``RequestRecord``: the pipeline
gives it its id, and each stage fills in what it learned (intake the route and canonical
target, authentication the caller, the device stage the device, authorization the
decision, the assertion step the identity for the upstream). Stages, the upstream, the
WebSocket relay, the decision log, the access event and the tracer read it from there,
so no stage needs to import another to know what it found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from aiohttp import web

from ztproxy.config.schema import Config
from ztproxy.context import CompiledRoute, RequestContext
from ztproxy.forward_auth import Question
from ztproxy.headers import HeaderRules, IPNetwork
from ztproxy.policy import Decision
from ztproxy.policy.model import Device, Identity, Service
from ztproxy.risk import Verdict
from ztproxy.routing import RouteTable
from ztproxy.sessions.model import Session
from ztproxy.sessions.sealing import Ticket
from ztproxy.signals.effects import Effect


@dataclass
class Readiness:
    """Whether this process should receive traffic (/readyz); cleared when draining."""

    ready: bool = False
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class IntakeSettings:
    scheme: str
    trusted_proxies: tuple[IPNetwork, ...]
    max_header_bytes: int
    max_request_body: int | None
    endpoints_route: CompiledRoute  # what proxy endpoints belong to where no route matches
    header_rules: HeaderRules  # which client headers never reach an upstream


CONFIG = web.AppKey("config", Config)
ROUTES = web.AppKey("routes", RouteTable[CompiledRoute])
ROUTE_LIST = web.AppKey("route_list", tuple[CompiledRoute, ...])  # in configuration order
INTAKE = web.AppKey("intake", IntakeSettings)
READINESS = web.AppKey("readiness", Readiness)
POLICY_HASH = web.AppKey("policy_hash", str)  # of every route's compiled rules: the policy version in the audit log



@dataclass(frozen=True, slots=True)
class Person:
    """A caller signed in with a browser session."""

    kind: ClassVar[str] = "person"  # the caller label of metrics and decision events
    ticket: Ticket
    session: Session  # as the security signals' effects leave it (``ztproxy.signals.effects``)
    effects: tuple[Effect, ...] = ()  # the effects that changed it

    @property
    def identity(self) -> Identity:
        return self.session.identity

    @property
    def subject(self) -> str:
        return self.session.subject

    @property
    def handle(self) -> str:
        """The session's public id, as logs, metrics and assertions name it (never the id itself)."""
        return self.ticket.public_id


@dataclass(frozen=True, slots=True)
class ServiceCaller:
    """A caller that is a service: an access token or a workload certificate vouched for it."""

    kind: ClassVar[str] = "service"  # the caller label of metrics and decision events
    service: Service
    handle: str  # a hash of the token or certificate, as logs and assertions name it (never the token)
    # Wall clock (Unix seconds) when the credential stops vouching: the token's exp (or the
    # introspection bound), the certificate's notAfter. A WebSocket it opened closes then.
    ends: float | None = None

    @property
    def subject(self) -> str:
        return self.service.subject


# Who is asking: a person with a browser session, or a service.
Caller = Person | ServiceCaller


@dataclass(slots=True)
class RequestRecord:
    """What one request has gathered so far; filled in by the stages in the order they run."""

    request_id: str  # the pipeline's, before any stage
    question: Question | None = None  # intake: what a forward-auth request asks (None: proxy it)
    intake: RequestContext | None = None  # intake: route, canonical target, client; None if it refused
    caller: Caller | None = None  # authenticate: who is asking, when anyone signed in
    # authenticate: why the credential presented (a bearer token) was refused, as a policy reason,
    # and the challenge headers of that refusal when they are not RFC 6750's (DPoP's own).
    refused_credential: str | None = None
    credential_challenge: tuple[tuple[str, str], ...] = ()
    device: Device | None = None  # assess_device: from what device, when a provider knows it
    risk: Verdict | None = None  # assess_risk: the session's signals, risk level and what they lead to
    decision: Decision | None = None  # authorize: the audit trail of this request
    # The assertion step: the identity headers (signed assertion first) the upstream receives.
    upstream_identity: tuple[tuple[str, str], ...] = ()

    @property
    def context(self) -> RequestContext:
        """The intake's context, for the stages after it (it refuses every request it cannot make one for)."""
        if self.intake is None:
            raise RuntimeError("no request context: intake has not accepted this request")
        return self.intake


RECORD = web.RequestKey("record", RequestRecord)
