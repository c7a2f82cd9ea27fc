"""``ztproxy policy test`` and ``policy diff``: a YAML file of request cases, run against a configuration's routes.

:func:`load_cases` reads and validates a tests file strictly (every problem, with the case
and the field, at once, as a :class:`~ztproxy.errors.ConfigError`) and turns each case into
the host and path it asks for and the :class:`RequestFacts` it carries. :func:`run_cases`
compares each decision with the case's ``expect`` and reports the routes and rules no case
exercised; :func:`diff_cases` compares the decisions of two configurations. The clock is a
parameter (``now``, the time of cases that give none); nothing here does I/O but reading files.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, TypeVar

from ztproxy.config.schema import Config
from ztproxy.config.values import parse_duration
from ztproxy.context import compile_routes
from ztproxy.errors import ConfigError, ConfigIssue, PathRejected
from ztproxy.policy.breakdown import NO_ROUTE, RouteDecision, decide
from ztproxy.policy.compile import compile_route_policy
from ztproxy.policy.model import Device, Identity, Outcome, RequestFacts, Service
from ztproxy.risk.context import Seen, browser_of, network_of
from ztproxy.risk.explain import SessionContext
from ztproxy.risk.signals import SIGNALS
from ztproxy.routing import normalize_host, parse_target

DECISIONS = (*(outcome.value for outcome in Outcome), NO_ROUTE)
DEFAULT_CLIENT_IP = "127.0.0.1"
DEFAULT_DEVICE_ID = "test-device"

_CASE_KEYS = ("name", "request", "identity", "device", "session", "expect")
_REQUEST_KEYS = ("method", "url", "client_ip", "time", "user_agent")
_SESSION_KEYS = ("network", "user_agent", "signals")
# grants: the routes the user holds an approved, unexpired grant for (just-in-time access).
_IDENTITY_KEYS = ("sub", "email", "groups", "claims", "acr", "amr", "mfa", "auth_age", "session_age", "grants")
# A calling service instead of a person: a workload's SPIFFE ID, or an access token's client and scopes.
_SERVICE_KEYS = ("service", "client_id", "scopes")
_DEVICE_KEYS = ("id", "managed", "disk_encrypted", "platform", "os_version", "posture_age", "score", "owner")
_EXPECT_KEYS = ("decision", "route", "reasons")

T = TypeVar("T")
Path = tuple[Any, ...]  # keys and indices from the top of the tests file


@dataclass(frozen=True, slots=True)
class Expect:
    decision: str  # one of DECISIONS
    route: str | None = None
    reasons: tuple[str, ...] = ()  # must all be among the actual reasons


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    host: str | None  # normalised, as routing matches it
    facts: RequestFacts  # facts.path is the canonical path
    expect: Expect | None
    session: SessionContext | None = None  # the session's context (risk signals), when given
    grants: frozenset[str] = frozenset()  # routes the user holds a grant for (identity.grants)


@dataclass(frozen=True, slots=True)
class Report:
    lines: tuple[str, ...]
    passed: int
    failed: int

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


@dataclass(slots=True)
class _Reader:
    """Checks plain data from YAML, collecting every issue with the case and the field."""

    lines: Mapping[Path, int]
    names: dict[int, str] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)

    def fail(self, path: Path, message: str) -> None:
        where = "" if not path else f'case "{self.names[path[0]]}"' if path[0] in self.names else f"case [{path[0]}]"
        rest = ".".join(str(part) if not isinstance(part, int) else f"[{part}]" for part in path[1:])
        line = next((self.lines[path[:end]] for end in range(len(path), -1, -1) if path[:end] in self.lines), None)
        where = ", ".join(part for part in (where, rest.replace(".[", "[")) if part)
        self.issues.append(ConfigIssue(where, message, line))

    def mapping(self, path: Path, value: Any, keys: Sequence[str], required: Sequence[str] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping (key: value), got {_kind(value)}")
            return {}
        for key in value:
            if key not in keys:
                close = difflib.get_close_matches(str(key), keys, n=1)
                self.fail((*path, key), f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        for key in required:
            if key not in value:
                self.fail(path, f"missing required key {key!r}")
        return {key: item for key, item in value.items() if key in keys}

    def check(self, path: Path, value: Any, convert: Callable[[Any], T]) -> T | None:
        try:
            return convert(value)
        except ValueError as exc:
            self.fail(path, str(exc))
            return None


def load_cases(path: str | os.PathLike[str], now: datetime) -> list[Case]:
    """The cases of a tests file, or one ConfigError naming every problem in it."""
    from ztproxy.config.source import parse, read_file

    source = os.fspath(path)
    parsed = parse(read_file(source), os.environ)
    if parsed.issues:
        raise ConfigError(list(parsed.issues), source)
    data, reader = parsed.document.data, _Reader(parsed.document.lines)
    if not isinstance(data, list) or not data:
        reader.fail((), f"expected a non-empty list of test cases, got {_kind(data)}")
        raise ConfigError(reader.issues, source)
    cases = _read_cases(reader, data, now, expect_required=True)
    if reader.issues:
        raise ConfigError(reader.issues, source)
    return cases


def case_from_mapping(data: Mapping[str, Any], now: datetime, source: str = "<arguments>") -> Case:
    """One case from plain data (``expect`` optional), validated as a tests file is."""
    reader = _Reader({})
    cases = _read_cases(reader, [dict(data)], now, expect_required=False)
    if reader.issues:
        raise ConfigError(reader.issues, source)
    return cases[0]


def _read_cases(reader: _Reader, data: list[Any], now: datetime, *, expect_required: bool) -> list[Case]:
    for index, item in enumerate(data):
        if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"].strip():
            reader.names[index] = item["name"]
    seen: set[str] = set()
    cases = []
    for index, item in enumerate(data):
        required = ("name", "request", "expect") if expect_required else ("name", "request")
        raw = reader.mapping((index,), item, _CASE_KEYS, required)
        name = raw.get("name")
        if "name" in raw and index not in reader.names:
            reader.fail((index, "name"), f"expected a non-empty string, got {_kind(name)}")
        elif name in seen:
            reader.fail((index, "name"), f"duplicate case name {name!r}")
        seen.add(str(name))
        case = _read_case(reader, (index,), raw, now) if isinstance(item, dict) else None
        if case is not None:
            cases.append(case)
    return cases


def _read_case(reader: _Reader, path: Path, raw: dict[str, Any], now: datetime) -> Case | None:
    before = len(reader.issues)
    request = reader.mapping((*path, "request"), raw.get("request", {}), _REQUEST_KEYS, ("url",))
    when = reader.check((*path, "request", "time"), request.get("time"), lambda v: _time(v, now))
    method = reader.check((*path, "request", "method"), request.get("method", "GET"), _method)
    client_ip = reader.check((*path, "request", "client_ip"), request.get("client_ip", DEFAULT_CLIENT_IP), _ip)
    target = reader.check((*path, "request", "url"), request.get("url", "https://localhost/"), _url)
    identity = device = service = None  # checked even when the time is not, with now in its place
    grants: list[str] | None = []
    raw_identity = raw.get("identity")
    if isinstance(raw_identity, dict) and any(key in raw_identity for key in _SERVICE_KEYS):
        service = _service(reader, (*path, "identity"), raw_identity)
    elif raw_identity is not None:
        identity = _identity(reader, (*path, "identity"), raw_identity, when or now)
        if isinstance(raw_identity, dict):
            grants = reader.check((*path, "identity", "grants"), raw_identity.get("grants", []), _texts)
    if raw.get("device") is not None:
        device = _device(reader, (*path, "device"), raw["device"], when or now)
    expect = _expect(reader, (*path, "expect"), raw["expect"]) if "expect" in raw else None
    user_agent = reader.check((*path, "request", "user_agent"), request.get("user_agent"), _optional(_text))
    session = None
    if raw.get("session") is not None and client_ip is not None:
        seen = Seen(network_of(client_ip), browser_of(user_agent), device.id if device is not None else None)
        session = _session(reader, (*path, "session"), raw["session"], seen)
    if (len(reader.issues) > before or path[0] not in reader.names
            or when is None or method is None or client_ip is None or target is None):
        return None
    facts = RequestFacts(method=method, path=target[1], client_ip=client_ip, now=when,
                         identity=identity, device=device, service=service)
    return Case(name=str(raw["name"]), host=target[0], facts=facts, expect=expect, session=session,
                grants=frozenset(grants or ()))


def _session(reader: _Reader, path: Path, value: Any, seen: Seen) -> SessionContext | None:
    """Where the session signed in (an address or its prefix), with what browser, and signals given now."""
    raw = reader.mapping(path, value, _SESSION_KEYS)
    network = reader.check((*path, "network"), raw.get("network"), _optional(_network))
    user_agent = reader.check((*path, "user_agent"), raw.get("user_agent"), _optional(_text))
    signals = reader.check((*path, "signals"), raw.get("signals", []), _signals) or []
    browser = browser_of(user_agent) if "user_agent" in raw else seen.browser
    return SessionContext(network or seen.network, browser, seen, tuple(signals))


def _network(value: Any) -> str:
    text = _text(value)
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"expected an address or a network such as 10.0.1.0/24, got {text!r}") from None
    return network_of(str(network.network_address)) or str(network)


def _signals(value: Any) -> list[str]:
    names = _texts(value)
    unknown = [name for name in names if name not in SIGNALS]
    if unknown:
        raise ValueError(f"unknown signal(s) {', '.join(map(repr, unknown))}: expected some of {', '.join(SIGNALS)}")
    return names


def _identity(reader: _Reader, path: Path, value: Any, now: datetime) -> Identity | None:
    raw = reader.mapping(path, value, _IDENTITY_KEYS)
    if isinstance(value, dict) and "sub" not in raw and "email" not in raw:
        reader.fail(path, "give at least 'sub' or 'email'")
    sub, email, acr = (reader.check((*path, key), raw.get(key), _optional(_text)) for key in ("sub", "email", "acr"))
    groups = reader.check((*path, "groups"), raw.get("groups", []), _texts)
    amr = reader.check((*path, "amr"), raw.get("amr", []), _texts)
    claims = reader.check((*path, "claims"), raw.get("claims", {}), _claims)
    mfa = reader.check((*path, "mfa"), raw.get("mfa", False), _bool)
    auth_age, session_age = (reader.check((*path, key), raw.get(key), _optional(parse_duration))
                             for key in ("auth_age", "session_age"))
    if groups is None or amr is None or claims is None or mfa is None:
        return None
    return Identity(subject=sub or email or "", email=email, groups=frozenset(groups), claims=claims, acr=acr,
                    amr=tuple(amr), mfa=mfa, auth_time=_ago(now, auth_age), session_started=_ago(now, session_age))


def _service(reader: _Reader, path: Path, value: Any) -> Service | None:
    raw = reader.mapping(path, value, _SERVICE_KEYS)
    spiffe_id, client_id = (reader.check((*path, key), raw.get(key), _optional(_text))
                            for key in ("service", "client_id"))
    scopes = reader.check((*path, "scopes"), raw.get("scopes", []), _texts)
    if spiffe_id is not None and not spiffe_id.startswith("spiffe://"):
        reader.fail((*path, "service"), f"expected a SPIFFE ID (spiffe://trust-domain/path), got {spiffe_id!r}")
        return None
    if spiffe_id is None and client_id is None:
        reader.fail(path, "give 'service' (a SPIFFE ID) or 'client_id'")
        return None
    if scopes is None:
        return None
    return Service(subject=spiffe_id or client_id or "", client_id=client_id, spiffe_id=spiffe_id,
                   scopes=frozenset(scopes))


def _device(reader: _Reader, path: Path, value: Any, now: datetime) -> Device | None:
    raw = reader.mapping(path, value, _DEVICE_KEYS)
    device_id, platform, os_version, owner = (reader.check((*path, key), raw.get(key), _optional(_text))
                                              for key in ("id", "platform", "os_version", "owner"))
    managed, encrypted = (reader.check((*path, key), raw.get(key, False), _bool)
                          for key in ("managed", "disk_encrypted"))
    score = reader.check((*path, "score"), raw.get("score"), _optional(_score))
    posture_age = reader.check((*path, "posture_age"), raw.get("posture_age"), _optional(parse_duration))
    if managed is None or encrypted is None:
        return None
    return Device(id=device_id or DEFAULT_DEVICE_ID, managed=managed, disk_encrypted=encrypted, platform=platform,
                  os_version=os_version, last_seen=_ago(now, posture_age), score=score, owner=owner)


def _expect(reader: _Reader, path: Path, value: Any) -> Expect | None:
    raw = reader.mapping(path, value, _EXPECT_KEYS, ("decision",))
    decision = reader.check((*path, "decision"), raw.get("decision"), _decision)
    route = reader.check((*path, "route"), raw.get("route"), _optional(_text))
    reasons = reader.check((*path, "reasons"), raw.get("reasons", []), _texts)
    if decision is None or reasons is None:
        return None
    return Expect(decision=decision, route=route, reasons=tuple(reasons))


def run_cases(config: Config, cases: Sequence[Case]) -> Report:
    """PASS/FAIL per case, the ``N passed, M failed`` summary, and what no case exercised."""
    routes = compile_routes(config)
    lines: list[str] = []
    failed = 0
    exercised: dict[str, set[str]] = {}
    for case in cases:
        outcome = decide(routes, case.host, case.facts, case.session, config.risk, case.grants)
        if outcome.route is not None:
            exercised.setdefault(outcome.route, set()).update(outcome.evaluated)
        problem = _mismatch(case.expect, outcome) if case.expect is not None else None
        failed += problem is not None
        lines.append(f"PASS {case.name}" if problem is None else f"FAIL {case.name}: {problem}")
    lines.append(f"{len(cases) - failed} passed, {failed} failed")
    lines.append(_coverage(config, exercised))
    return Report(lines=tuple(lines), passed=len(cases) - failed, failed=failed)


def diff_cases(old_config: Config, new_config: Config, cases: Sequence[Case]) -> list[str]:
    """One line per case whose route, decision or reasons differ between two configurations."""
    old, new = compile_routes(old_config), compile_routes(new_config)
    lines = []
    for case in cases:
        before = decide(old, case.host, case.facts, case.session, old_config.risk, case.grants)
        after = decide(new, case.host, case.facts, case.session, new_config.risk, case.grants)
        if (before.route, before.verdict, before.reasons) == (after.route, after.verdict, after.reasons):
            continue
        route = before.route if before.route == after.route else f"{before.route or '-'} -> {after.route or '-'}"
        if before.verdict == after.verdict:  # only the reasons changed
            change = f"{before.verdict} ({', '.join(before.reasons)}) -> {after.verdict} ({', '.join(after.reasons)})"
        else:
            change = f"{before.verdict} -> {after.verdict}" + (f" ({', '.join(after.reasons)})" * bool(after.reasons))
        lines.append(f"{case.name}: route {route}: {change}")
    return lines or ["no change"]


def _mismatch(expect: Expect, outcome: RouteDecision) -> str | None:
    reasons = ", ".join(outcome.reasons) or "none"
    if outcome.verdict != expect.decision:
        return f"expected {expect.decision}, got {outcome.verdict} (reasons: {reasons})"
    if expect.route is not None and outcome.route != expect.route:
        return f"expected route {expect.route}, got {outcome.route or 'no route'}"
    missing = [reason for reason in expect.reasons if reason not in outcome.reasons]
    if missing:
        return f"expected reasons {', '.join(missing)} missing (reasons: {reasons})"
    return None


def _coverage(config: Config, exercised: Mapping[str, set[str]]) -> str:
    gaps = []
    for route in config.routes:
        if route.name not in exercised:
            gaps.append(f"route {route.name}")
            continue
        policy = compile_route_policy(route.allow, config.policies, route.deny)
        gaps.extend(f"rule {route.name} {rule.label}" for rule in (*policy.deny, *policy.allow)
                    if rule.label not in exercised[route.name])
    return f"not exercised: {'; '.join(gaps)}" if gaps else "coverage: every route and rule exercised"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return str(value).lower()
    names = {dict: "a mapping", list: "a list", str: "a string", int: "a number", float: "a number"}
    return names.get(type(value), f"a {type(value).__name__}")


def _optional(convert: Callable[[Any], T]) -> Callable[[Any], T | None]:
    return lambda value: None if value is None else convert(value)


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {_kind(value)}")
    return value


def _texts(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of strings, got {_kind(value)}")
    return [_text(item) for item in value]


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_kind(value)}")
    return value


def _score(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ValueError(f"expected a whole number from 0 to 100, got {value!r}")
    return value


def _claims(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise ValueError(f"expected a mapping of claim names to values, got {_kind(value)}")
    return MappingProxyType(dict(value))


def _decision(value: Any) -> str:
    if value not in DECISIONS:
        raise ValueError(f"expected one of {', '.join(DECISIONS)}, got {value!r}")
    return str(value)


def _method(value: Any) -> str:
    text = _text(value).upper()
    if not text.isascii() or not text.isalpha():
        raise ValueError(f"invalid method {value!r}")
    return text


def _ip(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(_text(value)))
    except ValueError:
        raise ValueError(f"expected an IP address, got {value!r}") from None


def _url(value: Any) -> tuple[str | None, str]:
    text = _text(value)
    if not text.lower().startswith(("http://", "https://")):
        raise ValueError(f"expected an absolute http(s) URL such as https://wiki.corp.example/page, got {text!r}")
    try:
        target = parse_target(text)
    except PathRejected as exc:
        raise ValueError(f"invalid URL {text!r}: {exc.detail}") from None
    return normalize_host(target.authority or ""), target.path


def _time(value: Any, now: datetime) -> datetime:
    if value is None:
        return now
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"expected an ISO 8601 time such as 2024-05-06T10:00:00Z, got {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"expected an ISO 8601 time such as 2024-05-06T10:00:00Z, got {_kind(value)}")
    if value.utcoffset() is None:
        raise ValueError("the time needs a zone, e.g. 2024-05-06T10:00:00Z or +02:00")
    return value


def _ago(now: datetime, seconds: float | None) -> datetime | None:
    return None if seconds is None else now - timedelta(seconds=seconds)
