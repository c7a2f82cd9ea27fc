"""What each security event does to sessions, accounts and devices, once accepted.

Events are applied per subject in the order of their ``event_timestamp``: the last one
applied is kept per transmitter, subject and kind of event (an account's ``disabled``,
``purged`` and ``enabled`` are one kind, so are a device's ``compliant`` and
``not-compliant``), and an older one changes nothing (CAEP 1.0 2: a late event never undoes
a newer one).

- CAEP ``session-revoked``: the IdP session's sessions end (a complex subject's ``session``),
  else the user's; ``credential-change`` and RISC ``credential-compromise``: the user's.
- RISC ``account-disabled`` and ``account-purged``: the user's sessions end and sign-in is
  refused until ``account-enabled``.
- CAEP ``assurance-level-change`` (``decrease``), ``token-claims-change`` and
  ``device-compliance-change``: lasting effects kept in the effects table
  (``ztproxy.signals.effects``).

Endings go through the sessions' revocation path (store, then the revocation channel),
carrying the event type and the time it was accepted, for
``ztproxy_signal_enforcement_seconds``. No aiohttp.
"""

from __future__ import annotations

from ztproxy.sessions.manager import Ending, SessionManager
from ztproxy.sessions.shared_table import SharedTable
from ztproxy.signals import events as ev
from ztproxy.signals.effects import CLAIMS, MFA, Effect, SignalEffects, account_entry, device_entry
from ztproxy.signals.events import SecurityEvent, disabled_key

FOREVER = 10 * 365 * 86400.0  # the store wants a ttl; account states outlive any stream

APPLIED, IGNORED, UNMATCHED = "applied", "ignored", "unmatched"
_ENDING = (ev.SESSION_REVOKED, ev.CREDENTIAL_CHANGE, ev.CREDENTIAL_COMPROMISE)
_ACCOUNT = (ev.ACCOUNT_DISABLED, ev.ACCOUNT_PURGED, ev.ACCOUNT_ENABLED)


def short_name(event_type: str) -> str:
    """An event type as metrics and announcements name it: its URI's last segment."""
    return event_type.rsplit("/", 1)[-1][:64]


class Actions:
    """Applies accepted events (see the module docstring)."""

    def __init__(self, sessions: SessionManager, table: SharedTable, effects: SignalEffects, *,
                 lifetime: float) -> None:
        self.sessions = sessions
        self.table = table  # the effects table, written here, followed by every worker
        self.effects = effects  # this worker's copy, to merge successive claim changes
        self._lifetime = lifetime  # sessions.lifetime: how long a session started before an effect may live

    async def apply(self, event: SecurityEvent, provider: str, transmitter: str, accepted: float) -> str:
        """What ``event`` (from ``transmitter``, naming users of ``provider``) did: applied, ignored, unmatched."""
        store = self.sessions.store
        kind = "account" if event.event_type in _ACCOUNT else event.event_type
        order_key = f"ssf:last:{transmitter}:{kind}:{event.subject.key}"
        last = await store.get(order_key)
        if last is not None and float(last) > event.timestamp:
            return IGNORED
        await store.put(order_key, repr(event.timestamp).encode(), FOREVER)
        if event.event_type == ev.DEVICE_COMPLIANCE_CHANGE:
            return await self._device(event, accepted)
        who = event.subject
        cause = short_name(event.event_type)
        ending = Ending("system", f"security event {cause} from {transmitter}", provider, who.subject, who.email)
        if event.event_type == ev.SESSION_REVOKED and who.session is not None:
            ended = await self.sessions.end_matching(provider, idp_session=who.session, cause=cause, at=accepted,
                                                     ending=ending)
            return APPLIED if ended else UNMATCHED
        if event.event_type not in (*_ENDING, *_ACCOUNT, ev.ASSURANCE_LEVEL_CHANGE, ev.TOKEN_CLAIMS_CHANGE):
            return IGNORED
        if event.event_type in (ev.ASSURANCE_LEVEL_CHANGE, ev.TOKEN_CLAIMS_CHANGE):
            return await self._session_effect(event, provider, accepted)
        if who.subject is None and who.email is None:
            return UNMATCHED
        # An account names a user: by sub at this issuer, else by email (RFC 9493 formats).
        account = f"sub:{who.subject}" if who.subject is not None else f"email:{who.email}"
        if event.event_type == ev.ACCOUNT_ENABLED:
            await store.delete(disabled_key(provider, account))
            return APPLIED
        if event.event_type in (ev.ACCOUNT_DISABLED, ev.ACCOUNT_PURGED):
            await store.put(disabled_key(provider, account), repr(event.timestamp).encode(), FOREVER)
        ended = await self.sessions.end_matching(provider, subject=who.subject, email=who.email, cause=cause,
                                                 at=accepted, ending=ending)
        return APPLIED if ended or event.event_type not in _ENDING else UNMATCHED

    async def _session_effect(self, event: SecurityEvent, provider: str, accepted: float) -> str:
        """MFA lost or claims changed for the sessions of an IdP session, else of a user."""
        who = event.subject
        payload = event.payload
        if event.event_type == ev.ASSURANCE_LEVEL_CHANGE:
            if payload.get("change_direction") != "decrease":
                return IGNORED  # more assurance at the IdP: a session gains MFA by signing in with it (step-up)
            kind, claims = MFA, {}
        else:
            changed = payload.get("claims")
            if not isinstance(changed, dict) or not changed:
                return IGNORED
            kind, claims = CLAIMS, changed
        account = (f"sid:{who.session}" if who.session is not None else f"sub:{who.subject}"
                   if who.subject is not None else f"email:{who.email}" if who.email is not None else None)
        if account is None or not await self.sessions.matching(provider, idp_session=who.session,
                                                               subject=who.subject, email=who.email):
            return UNMATCHED  # no session of theirs here: nothing to change
        entry = account_entry(kind, provider, account)
        earlier = self.effects.get(entry)
        if earlier is not None and kind == CLAIMS:
            claims = {**earlier.claims, **claims}  # one change after another: the later claim wins
        effect = Effect(entry, event.timestamp, accepted, claims)
        await self.table.write(entry, effect.to_bytes(), self._lifetime)
        return APPLIED

    async def _device(self, event: SecurityEvent, accepted: float) -> str:
        device = event.subject.device
        status = event.payload.get("current_status")
        if device is None or status not in ("compliant", "not-compliant"):
            return UNMATCHED if device is None else IGNORED
        entry = device_entry(device)
        if status == "compliant":
            await self.table.remove(entry)
            return APPLIED
        # Until a compliant event: devices are not sessions, and one may come back any time.
        await self.table.write(entry, Effect(entry, event.timestamp, accepted).to_bytes(), None)
        return APPLIED
