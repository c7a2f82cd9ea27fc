"""Security Event Tokens (RFC 8417) as the Shared Signals Framework carries them, read and checked.

Pure functions: the token, the transmitter's keys and the clock come in as arguments. A
refusal is a :class:`SetRefused` with the RFC 8935 error code the push answer gives
(``invalid_key``, ``invalid_issuer``, ``invalid_audience``, ``invalid_request``). Subjects
follow RFC 9493 and SSF: ``email``, ``iss_sub``, ``opaque``, and ``complex`` ones whose
``user``, ``session`` and ``device`` members name each part.

This module imports no aiohttp.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import KeySet

from ztproxy.oidc.tokens import TokenInvalid, UnknownSigningKey, verify_signature

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
SESSION_REVOKED = CAEP + "session-revoked"
CREDENTIAL_CHANGE = CAEP + "credential-change"
ASSURANCE_LEVEL_CHANGE = CAEP + "assurance-level-change"
DEVICE_COMPLIANCE_CHANGE = CAEP + "device-compliance-change"
TOKEN_CLAIMS_CHANGE = CAEP + "token-claims-change"
CREDENTIAL_COMPROMISE = RISC + "credential-compromise"
ACCOUNT_DISABLED = RISC + "account-disabled"
ACCOUNT_PURGED = RISC + "account-purged"
ACCOUNT_ENABLED = RISC + "account-enabled"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"

# The events ztproxy acts on: what a stream asks its transmitter for.
ACTED_ON = (SESSION_REVOKED, CREDENTIAL_CHANGE, ASSURANCE_LEVEL_CHANGE, DEVICE_COMPLIANCE_CHANGE, TOKEN_CLAIMS_CHANGE,
            CREDENTIAL_COMPROMISE, ACCOUNT_DISABLED, ACCOUNT_PURGED, ACCOUNT_ENABLED)
MAX_AGE = 300.0  # a SET issued longer ago than this is refused (replays, stuck queues)
_TYPES = frozenset({"secevent+jwt"})  # RFC 8417 2.3


def disabled_key(provider: str, account: str) -> str:
    """Where an account-disabled signal is kept (``account``: ``sub:...`` or ``email:...``):
    sign-in refuses that user while it is there."""
    name = account.lower() if account.startswith("email:") else account
    return f"ssf:disabled:{provider}:{hashlib.sha256(name.encode()).hexdigest()}"


class SetRefused(Exception):
    """A SET that is not accepted; ``err`` is the RFC 8935 2.3 error code."""

    def __init__(self, err: str, description: str) -> None:
        super().__init__(description)
        self.err = err
        self.description = description


@dataclass(frozen=True, slots=True)
class Subject:
    """Whom an event is about, as far as ztproxy can match it: a user, an IdP session, a device."""

    email: str | None = None
    issuer: str | None = None  # of an iss_sub user
    subject: str | None = None  # of an iss_sub user
    session: str | None = None  # the IdP's sid (a complex subject's session member)
    device: str | None = None  # the device id the posture providers establish (opaque)

    @property
    def key(self) -> str:
        """A stable name of the subject, to order its events by their timestamps."""
        return "|".join(str(part) for part in (self.email, self.issuer, self.subject, self.session, self.device))


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    jti: str
    issued: float
    event_type: str
    payload: Mapping[str, Any]
    subject: Subject
    timestamp: float  # event_timestamp, else the SET's iat


def _simple(value: Mapping[str, Any], role: str) -> Subject:
    kind = value.get("format")
    if kind == "email" and isinstance(value.get("email"), str):
        return Subject(email=value["email"].lower())
    if kind == "iss_sub" and isinstance(value.get("iss"), str) and isinstance(value.get("sub"), str):
        if role == "session":
            return Subject(issuer=value["iss"], session=value["sub"])
        return Subject(issuer=value["iss"], subject=value["sub"])
    if kind == "opaque" and isinstance(value.get("id"), str):
        if role == "device":
            return Subject(device=value["id"])
        if role == "session":
            return Subject(session=value["id"])
        return Subject(subject=value["id"])
    raise SetRefused("invalid_request", f"unsupported {role} subject format {str(kind)[:40]!r}")


def parse_subject(value: object) -> Subject:
    """An RFC 9493 subject identifier (or an SSF complex subject) as a :class:`Subject`."""
    if not isinstance(value, dict):
        raise SetRefused("invalid_request", "the SET names no subject")
    if value.get("format") != "complex":
        return _simple(value, "user")
    parts = {role: _simple(member, role) for role in ("user", "session", "device")
             if isinstance(member := value.get(role), dict)}
    if not parts:
        raise SetRefused("invalid_request", "the complex subject has no user, session or device")
    user, session, device = parts.get("user"), parts.get("session"), parts.get("device")
    named = user or session
    return Subject(email=user.email if user else None, issuer=named.issuer if named else None,
                   subject=user.subject if user else None, session=session.session if session else None,
                   device=device.device if device else None)


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def read_set(token: str, *, keys: KeySet, issuer: str, audience: str, algorithms: Sequence[str],
             now: float, leeway: float = 60.0) -> SecurityEvent:
    """The one event of a SET (RFC 8417, SSF 1.0), or SetRefused; UnknownSigningKey to refetch keys."""
    try:
        header, claims = verify_signature(token, keys, algorithms)
    except UnknownSigningKey:
        raise
    except TokenInvalid as exc:
        code = "invalid_request" if exc.reason == "malformed" else "invalid_key"
        raise SetRefused(code, exc.detail) from exc
    if str(header.get("typ", "secevent+jwt")).lower().removeprefix("application/") not in _TYPES:
        raise SetRefused("invalid_request", "the token is not a SET (typ)")
    if claims.get("iss") != issuer:
        raise SetRefused("invalid_issuer", "the SET is from another issuer")
    aud = claims.get("aud")
    if audience not in ([aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []):
        raise SetRefused("invalid_audience", "the SET is for another audience")
    jti, iat = claims.get("jti"), _number(claims.get("iat"))
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise SetRefused("invalid_request", "the SET has no jti")
    if iat is None or iat < now - MAX_AGE or iat > now + leeway:
        raise SetRefused("invalid_request", "the SET's iat is too old or in the future")
    if "exp" in claims:  # RFC 8417 2.2: a SET has no exp; one that does is not a SET
        raise SetRefused("invalid_request", "the SET has an exp claim")
    events = claims.get("events")
    if not isinstance(events, dict) or len(events) != 1:
        raise SetRefused("invalid_request", "the SET must carry exactly one event")
    [(event_type, payload)] = events.items()
    if not isinstance(payload, dict):
        raise SetRefused("invalid_request", "the event is not an object")
    # SSF 1.0: the subject in sub_id; earlier drafts put it in the event's subject member.
    subject = parse_subject(claims.get("sub_id", payload.get("subject")))
    timestamp = _number(payload.get("event_timestamp"))
    return SecurityEvent(jti=jti, issued=iat, event_type=str(event_type), payload=payload, subject=subject,
                         timestamp=timestamp if timestamp is not None else iat)
