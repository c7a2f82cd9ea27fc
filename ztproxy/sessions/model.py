"""What a session remembers about a signed-in user, and how it is turned into bytes and back.

The bytes are sealed (``sealing``) before they reach a store; this module only knows the
shape. Times are Unix seconds. No aiohttp, no I/O.
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

FORMAT_VERSION = 1


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

    def to_bytes(self) -> bytes:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        data["claims"] = dict(self.claims)
        data["risk"] = None if self.risk is None else self.risk.to_data()
        data["v"] = FORMAT_VERSION
        return orjson.dumps(data)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Session | None:
        """The session in ``raw``, or None when it is not one this version understands."""
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict) or data.pop("v", None) != FORMAT_VERSION:
                return None
            data["groups"] = tuple(data["groups"])
            data["amr"] = tuple(data["amr"])
            risk = data.get("risk")
            data["risk"] = None if risk is None else RiskState.from_data(risk)
            session = cls(**data)
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError, OverflowError):
            return None
        if not isinstance(session.subject, str) or not isinstance(session.claims, dict):
            return None
        return session
