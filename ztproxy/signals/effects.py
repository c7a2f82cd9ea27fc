"""What security signals change short of ending sessions, in force on every worker and replica.

Three CAEP events leave a lasting effect instead of ending sessions. Each is an entry of the
shared table :data:`TABLE` (``ztproxy.sessions.shared_table``: in the session store, so a
restart keeps it; announced, so every worker applies it at once), named by a hash of whom
it is about:

- ``mfa:`` (``assurance-level-change``, ``change_direction: decrease``): the sessions of that
  user (or IdP session) that began before the event was accepted lose MFA: the ``mfa``
  criterion asks for a step-up, whose new sign-in makes a session that has it again; the
  sessions themselves go on. Kept for ``sessions.lifetime``, the longest such a session lives.
- ``claims:`` (``token-claims-change``): the event's claims (groups included) over those of
  the user's sessions refreshed before it was accepted, until their next identity refresh at
  the IdP (which then tells the claims itself). Kept for ``sessions.lifetime``.
- ``device:`` (``device-compliance-change`` to ``not-compliant``): the device fails every
  ``device`` criterion (``device-not-compliant``), whatever the posture providers say, until a
  ``compliant`` event for it removes the entry.

:class:`SignalEffects` is a worker's copy: dict lookups on the request path, and only when
the table holds anything. It also times the first request each effect refused here
(``ztproxy_signal_enforcement_seconds``) and tells open WebSockets to judge themselves again
when an effect arrives. No aiohttp.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from ztproxy import metrics
from ztproxy.config.identity import IdentityProviderConfig
from ztproxy.oidc.claims import session_with_claims, session_without_mfa
from ztproxy.policy.model import Device
from ztproxy.policy.reasons import DEVICE_NOT_COMPLIANT, MFA_REQUIRED
from ztproxy.sessions.model import Session

TABLE = "signals:effects"
MFA, CLAIMS, DEVICE = "mfa", "claims", "device"
_EVENTS = {MFA: "assurance-level-change", CLAIMS: "token-claims-change", DEVICE: "device-compliance-change"}
_MAX_ADJUSTED = 10_000  # sessions whose adjusted copy this worker remembers

_log = structlog.get_logger("ztproxy.signals")


def account_entry(kind: str, provider: str, account: str) -> str:
    """The entry of an effect on a user (``account``: ``sub:...``, ``email:...``) or an IdP session (``sid:...``)."""
    name = account.lower() if account.startswith("email:") else account
    digest = hashlib.sha256(f"{provider}\0{name}".encode()).hexdigest()
    return f"{kind}:{digest}"


def device_entry(device_id: str) -> str:
    return f"{DEVICE}:{hashlib.sha256(device_id.encode()).hexdigest()}"


def session_entries(kind: str, session: Session) -> list[str]:
    """The entries that would name this session's user or IdP session."""
    accounts = [f"sub:{session.subject}"]
    if session.email:
        accounts.append(f"email:{session.email}")
    if session.idp_session:
        accounts.append(f"sid:{session.idp_session}")
    return [account_entry(kind, session.provider, account) for account in accounts]


@dataclass(frozen=True, slots=True)
class Effect:
    """One entry: when its event happened (``event_timestamp``) and was accepted (Unix seconds)."""

    entry: str
    happened: float
    accepted: float
    claims: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def event(self) -> str:
        return _EVENTS[self.entry.partition(":")[0]]

    def to_bytes(self) -> bytes:
        return orjson.dumps({"happened": self.happened, "accepted": self.accepted, "claims": dict(self.claims)})

    @classmethod
    def from_entry(cls, entry: str, value: bytes) -> Effect | None:
        """The effect a table entry holds; None for anything this version cannot read."""
        if entry.partition(":")[0] not in _EVENTS:
            return None
        try:
            fields = orjson.loads(value)
            happened, accepted, claims = float(fields["happened"]), float(fields["accepted"]), fields["claims"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        return cls(entry, happened, accepted, claims) if isinstance(claims, dict) else None


class SignalEffects:
    """This worker's copy of the table (see the module docstring)."""

    def __init__(self, providers: Iterable[IdentityProviderConfig]) -> None:
        self._providers = {provider.name: provider for provider in providers}
        self._effects: dict[str, Effect] = {}
        self._kinds: frozenset[str] = frozenset()  # which kinds of entries there are: nothing to look up otherwise
        # id(session) -> (the session, the effects version, its adjusted copy, the effects applied)
        self._adjusted: dict[int, tuple[Session, int, Session, tuple[Effect, ...]]] = {}
        self._version = 0
        self._listeners: set[Callable[[], None]] = set()

    @property
    def active(self) -> bool:
        return bool(self._effects)

    def get(self, entry: str) -> Effect | None:
        return self._effects.get(entry)

    def replace(self, entries: Mapping[str, bytes]) -> None:
        """The whole table, as read from the store."""
        found = (Effect.from_entry(entry, value) for entry, value in entries.items())
        effects = {effect.entry: effect for effect in found if effect is not None}
        if effects != self._effects:
            self._set(effects)

    def add(self, entry: str, value: bytes) -> None:
        """One entry announced, in force here before the table is read again."""
        effect = Effect.from_entry(entry, value)
        if effect is not None and self._effects.get(entry) != effect:
            self._set({**self._effects, entry: effect})

    def _set(self, effects: dict[str, Effect]) -> None:
        self._effects = effects
        self._kinds = frozenset(entry.partition(":")[0] for entry in effects)
        self._version += 1
        self._adjusted.clear()
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # one socket's bug must not keep the others from judging themselves
                _log.exception("signal_effect_listener_failed")

    def listen(self, on_change: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_change()`` whenever the effects change here; returns how to stop."""
        self._listeners.add(on_change)
        return lambda: self._listeners.discard(on_change)

    def adjust(self, session: Session) -> tuple[Session, tuple[Effect, ...]]:
        """The session as the effects leave it, and the effects that changed it."""
        if not self._kinds & {MFA, CLAIMS}:
            return session, ()
        remembered = self._adjusted.get(id(session))
        if remembered is not None and remembered[0] is session and remembered[1] == self._version:
            return remembered[2], remembered[3]
        provider = self._providers.get(session.provider)
        adjusted, applied = session, []
        if provider is not None:
            for effect in self._matching(CLAIMS, session):
                if session.refreshed < effect.accepted:
                    adjusted = session_with_claims(provider, adjusted, effect.claims)
                    applied.append(effect)
            mfa_lost = [effect for effect in self._matching(MFA, session) if session.created < effect.accepted]
            if mfa_lost:
                adjusted = session_without_mfa(provider, adjusted)
                applied.extend(mfa_lost)
        if len(self._adjusted) >= _MAX_ADJUSTED:
            self._adjusted.clear()
        self._adjusted[id(session)] = (session, self._version, adjusted, tuple(applied))
        return adjusted, tuple(applied)

    def _matching(self, kind: str, session: Session) -> list[Effect]:
        if kind not in self._kinds:
            return []
        found = (self._effects.get(entry) for entry in session_entries(kind, session))
        # Oldest first, so a newer change of the same claim wins.
        return sorted((effect for effect in found if effect is not None), key=lambda effect: effect.happened)

    def device(self, device: Device) -> Device:
        """The device, failing every ``device`` criterion while a signal says it is not compliant."""
        if DEVICE not in self._kinds or device_entry(device.id) not in self._effects:
            return device
        return dataclasses.replace(device, compliant=False)

    def refused(self, applied: Collection[Effect], device: Device | None, reasons: Collection[str],
                now: float) -> None:
        """A request was refused for ``reasons``: time the effects that caused it (the first time here)."""
        for effect in applied:
            if effect.entry.startswith(CLAIMS) or MFA_REQUIRED in reasons:
                metrics.signal_enforced(effect.event, f"{effect.entry}@{effect.accepted}", effect.accepted, now)
        if device is not None and not device.compliant and DEVICE_NOT_COMPLIANT in reasons:
            found = self._effects.get(device_entry(device.id))
            if found is not None:
                metrics.signal_enforced(found.event, f"{found.entry}@{found.accepted}", found.accepted, now)
