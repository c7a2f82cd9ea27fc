"""What a session remembers about a signed-in user, and how it is turned into bytes and back.

The bytes are sealed (``sealing``) before they reach a store; this module only knows the
shape. Times are Unix seconds. No aiohttp, no I/O.

Two formats, both JSON. Format 2, written for every session of a version 2 ticket, is kept
small because every session in Redis costs its bytes (issue 19: at most 1 KiB a session):
short names, nothing said that is empty or that another field already says (a claim equal
to ``email``, ``name`` or ``groups``; ``last_seen`` and ``refreshed`` equal to
``created``), the risk state as a list. Format 1 is what releases before it wrote: read
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

# Format 2's names, and the fields it leaves out when they hold these defaults.
_SHORT = {"provider": "p", "subject": "s", "email": "e", "name": "n", "groups": "g", "claims": "c", "acr": "a",
          "amr": "am", "mfa": "m", "auth_time": "at", "created": "t", "last_seen": "ls", "refreshed": "rf",
          "refresh_token": "rt", "id_token": "it", "idp_session": "sid", "risk": "r"}
_LONG = {short: name for name, short in _SHORT.items()}
# RiskState.to_data's fields, in the order format 2 lists their values.
_RISK_FIELDS = ("signed_in_from", "browser", "device", "device_known", "network", "previous_network", "moved_at",
                "signals", "locked_until")
_GROUPS_CLAIM = "gc"  # format 2: the claim that held exactly the groups, left out of the claims
_CLAIMS_ABSENT = "ca"  # format 2: fields (email, name) the claims did not hold


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
    id_token: str | None = None  # the hint for RP-initiated logout
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
        data["claims"] = dict(self.claims)
        data["risk"] = None if self.risk is None else self.risk.to_data()
        if legacy:
            data["v"] = LEGACY_FORMAT_VERSION
            return orjson.dumps(data)
        claims = data["claims"]
        absent = [name for name in ("email", "name") if data[name] is not None and name not in claims]
        for name in ("email", "name"):
            if data[name] is not None and claims.get(name) == data[name]:
                del claims[name]
        groups_claim = next((name for name, value in claims.items() if value == list(self.groups) and self.groups),
                            None)
        if groups_claim is not None:
            del claims[groups_claim]
        for name in ("last_seen", "refreshed"):
            if data[name] == self.created:
                del data[name]
        if data["risk"] is not None:
            data["risk"] = [data["risk"][name] for name in _RISK_FIELDS]
        compact: dict[str, Any] = {"v": FORMAT_VERSION}
        compact.update((_SHORT[name], value) for name, value in data.items() if not _is_empty(value))
        if groups_claim is not None:
            compact[_GROUPS_CLAIM] = groups_claim
        if absent:
            compact[_CLAIMS_ABSENT] = absent
        return orjson.dumps(compact)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Session | None:
        """The session in ``raw`` (either format), or None when it is not one this version understands."""
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict):
                return None
            version = data.pop("v", None)
            if version == FORMAT_VERSION:
                data = _expand(data)
            elif version != LEGACY_FORMAT_VERSION:
                return None
            data["groups"] = tuple(data["groups"])
            data["amr"] = tuple(data["amr"])
            risk = data.get("risk")
            data["risk"] = None if risk is None else RiskState.from_data(risk)
            session = cls(**data)
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError, OverflowError, AttributeError):
            return None
        if not isinstance(session.subject, str) or not isinstance(session.claims, dict):
            return None
        return session


def _is_empty(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (list, tuple, dict)) and not value)


def _expand(compact: dict[str, Any]) -> dict[str, Any]:
    """Format 2 read back into format 1's fields (raises TypeError, KeyError, ValueError on another shape)."""
    groups_claim = compact.pop(_GROUPS_CLAIM, None)
    absent = compact.pop(_CLAIMS_ABSENT, [])
    if not (groups_claim is None or isinstance(groups_claim, str)) or not isinstance(absent, list):
        raise TypeError("not a session of format 2")
    data: dict[str, Any] = {_LONG[short]: value for short, value in compact.items()}
    data.setdefault("email", None)
    data.setdefault("name", None)
    data.setdefault("groups", [])
    data.setdefault("acr", None)
    data.setdefault("amr", [])
    data.setdefault("mfa", False)
    data.setdefault("auth_time", None)
    data.setdefault("last_seen", data["created"])
    data.setdefault("refreshed", data["created"])
    claims = data.setdefault("claims", {})
    for name in ("email", "name"):
        if data[name] is not None and name not in absent:
            claims.setdefault(name, data[name])
    if groups_claim is not None:
        claims[groups_claim] = list(data["groups"])
    risk = data.get("risk")
    if risk is not None:
        data["risk"] = dict(zip(_RISK_FIELDS, risk, strict=True))
    return data
