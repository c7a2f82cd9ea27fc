"""What a session remembers about a signed-in user, and how it is turned into bytes and back.

The bytes are sealed (``sealing``) before they reach a store; this module only knows the
shape. Times are Unix seconds. No aiohttp, no I/O.

Two formats, both JSON. Format 2, written for every session of a version 2 ticket, is kept
small because every session in Redis costs its bytes (issue 19: at most 1 KiB a session):
a list of values in a fixed order, no names, the empty ones at the end left out, nothing
said that another value already says (a claim equal to ``email``, ``name`` or ``groups``;
``last_seen`` and ``refreshed`` equal to ``created``; the risk state's network while it is
the sign-in's). Format 1, an object by field name, is what releases before it wrote: read
always, and still written for the sessions of legacy tickets, which replicas of such a
release may be serving during a rolling upgrade.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson

from ztproxy.policy.model import Identity
from ztproxy.risk.context import RiskState

FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1

# Format 2 is a list: the version, then these values in this order, the empty ones at the end
# left out. The usual ones come first; a value the list leaves out or holds as null is its default.
_FIELDS = ("provider", "subject", "created", "email", "name", "claims", "acr", "amr", "auth_time", "refresh_token",
           "idp_session", "risk", "groups",
           "groups_claim",  # the claim that held exactly the groups, left out of the claims
           "mfa", "last_seen", "refreshed", "id_token",
           "claims_absent")  # which of email and name the claims did not hold
_DEFAULTS: dict[str, Any] = {"claims": {}, "amr": [], "groups": [], "mfa": False, "claims_absent": []}
# RiskState.to_data's fields, in the order format 2 lists their values (network: 1 when it is
# still the sign-in's), and their defaults.
_RISK_FIELDS = ("signed_in_from", "browser", "network", "device", "device_known", "previous_network", "moved_at",
                "signals", "locked_until")
_RISK_DEFAULTS: dict[str, Any] = {"device_known": False, "signals": []}
_SAME_NETWORK = 1


@dataclass(frozen=True, slots=True)
class Session:
    provider: str  # the identity provider's configured name
    subject: str
    email: str | None
    name: str | None
    groups: tuple[str, ...]
    claims: Mapping[str, Any]  # other claims of the ID token and userinfo, for `claims` rules
    acr: str | None
    amr: tuple[str, ...]
    mfa: bool  # the last authentication used a second factor (per the provider's mfa settings)
    auth_time: float | None  # when the user last authenticated at the IdP; None: it did not say
    created: float  # sign-in; a step-up is a new sign-in, so a new session with a new start
    last_seen: float  # last use, coarse (for the idle timeout)
    refreshed: float  # last successful identity refresh at the IdP
    refresh_token: str | None = None
    id_token: str | None = None  # the hint for RP-initiated logout, kept only with logout_id_token_hint
    idp_session: str | None = None  # the OP's `sid`, for back-channel logout
    risk: RiskState | None = None  # the sign-in's context (prefixes) and the session's recent risk
    identity: Identity = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Built once per session object; the hot path hands it to the policy as it is.
        object.__setattr__(self, "identity", Identity(
            subject=self.subject,
            email=self.email,
            name=self.name,
            groups=frozenset(self.groups),
            claims=MappingProxyType(dict(self.claims)),
            acr=self.acr,
            amr=self.amr,
            auth_time=None if self.auth_time is None else datetime.fromtimestamp(self.auth_time, UTC),
            session_started=datetime.fromtimestamp(self.created, UTC),
            mfa=self.mfa,
        ))

    def replace(self, **changes: Any) -> Session:
        return dataclasses.replace(self, **changes)

    def to_bytes(self, *, legacy: bool = False) -> bytes:
        """Format 2, or with ``legacy`` format 1 (see the module docstring)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        data["claims"] = claims = dict(self.claims)
        data["risk"] = None if self.risk is None else self.risk.to_data()
        if legacy:
            data["v"] = LEGACY_FORMAT_VERSION
            return orjson.dumps(data)
        data["claims_absent"] = [name for name in ("email", "name") if data[name] is not None and name not in claims]
        for name in ("email", "name"):
            if data[name] is not None and claims.get(name) == data[name]:
                del claims[name]
        data["groups_claim"] = next((name for name, value in claims.items() if self.groups
                                     and value == list(self.groups)), None)
        claims.pop(data["groups_claim"], None)
        for name in ("last_seen", "refreshed"):
            if data[name] == self.created:
                data[name] = None
        risk = data["risk"]
        if risk is not None:
            if risk["network"] is not None and risk["network"] == risk["signed_in_from"]:
                risk["network"] = _SAME_NETWORK
            data["risk"] = _trimmed([risk[name] for name in _RISK_FIELDS])
        return orjson.dumps([FORMAT_VERSION, *_trimmed([data[name] for name in _FIELDS])])

    @classmethod
    def from_bytes(cls, raw: bytes) -> Session | None:
        """The session in ``raw`` (either format), or None when it is not one this version understands."""
        try:
            data = orjson.loads(raw)
            if isinstance(data, list) and data[:1] == [FORMAT_VERSION]:
                data = _expand(data[1:])
            elif not isinstance(data, dict) or data.pop("v", None) != LEGACY_FORMAT_VERSION:
                return None
            data["groups"] = tuple(data["groups"])
            data["amr"] = tuple(data["amr"])
            risk = data.get("risk")
            data["risk"] = None if risk is None else RiskState.from_data(risk)
            session = cls(**data)
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError, OverflowError, AttributeError):
            return None
        if not (isinstance(session.provider, str) and isinstance(session.subject, str)
                and isinstance(session.claims, dict) and isinstance(session.mfa, bool)
                and all(isinstance(value, int | float) for value in (session.created, session.last_seen,
                                                                     session.refreshed, session.auth_time or 0))
                and all(value is None or isinstance(value, str) for value in (
                    session.email, session.name, session.acr, session.refresh_token, session.id_token,
                    session.idp_session))):
            return None
        return session


def _trimmed(values: list[Any]) -> list[Any]:
    """``values`` without the empty ones at the end (None, False, empty lists, tuples and dicts)."""
    end = len(values)
    while end and (values[end - 1] is None or values[end - 1] is False
                   or (isinstance(values[end - 1], list | tuple | dict) and not values[end - 1])):
        end -= 1
    return values[:end]


def _defaulted(values: list[Any], fields: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    if len(values) > len(fields):
        raise ValueError("more values than fields")
    given = dict(zip(fields, values, strict=False))
    return {name: defaults.get(name) if given.get(name) is None else given[name] for name in fields}


def _expand(values: list[Any]) -> dict[str, Any]:
    """Format 2's values read back into format 1's fields (raises TypeError, KeyError, ValueError on another shape)."""
    data = _defaulted(values, _FIELDS, _DEFAULTS)
    groups_claim, absent, claims = data.pop("groups_claim"), data.pop("claims_absent"), data["claims"]
    if not (groups_claim is None or isinstance(groups_claim, str)) or not isinstance(absent, list):
        raise TypeError("not a session of format 2")
    for name in ("last_seen", "refreshed"):
        if data[name] is None:
            data[name] = data["created"]
    for name in ("email", "name"):
        if data[name] is not None and name not in absent:
            claims.setdefault(name, data[name])
    if groups_claim is not None:
        claims[groups_claim] = list(data["groups"])
    if data["risk"] is not None:
        risk = data["risk"] = _defaulted(data["risk"], _RISK_FIELDS, _RISK_DEFAULTS)
        if risk["network"] == _SAME_NETWORK:
            risk["network"] = risk["signed_in_from"]
    return data
