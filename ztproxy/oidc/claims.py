"""From what the IdP says (ID token, userinfo) to the session's picture of the user.

Used at sign-in and at every identity refresh, so both read claims the same way.
No aiohttp, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ztproxy.config.identity import IdentityProviderConfig
from ztproxy.oidc.provider import TokenResponse
from ztproxy.oidc.tokens import IdTokenClaims, is_mfa
from ztproxy.sessions.model import Session

# Claims about the token rather than the user: not offered to `claims` rules.
_TOKEN_CLAIMS = frozenset({"iss", "aud", "exp", "iat", "nbf", "jti", "nonce", "at_hash", "c_hash", "s_hash",
                           "auth_time", "azp", "sid", "acr", "amr", "sub", "updated_at"})


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _groups(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    return tuple(sorted({group for group in value if isinstance(group, str) and group}))


def user_claims(id_token: Mapping[str, Any], userinfo: Mapping[str, Any]) -> dict[str, Any]:
    """The user's claims, userinfo over ID token, without the token bookkeeping ones."""
    merged = {**id_token, **userinfo}
    return {name: value for name, value in merged.items()
            if name not in _TOKEN_CLAIMS and isinstance(value, (str, int, float, bool, list, type(None)))}


def session_from_login(config: IdentityProviderConfig, claims: IdTokenClaims, userinfo: Mapping[str, Any],
                       tokens: TokenResponse, now: float, groups: tuple[str, ...] | None = None) -> Session:
    """The new session; ``groups`` (from a groups source such as Graph) over the claims' groups."""
    merged = user_claims(claims.raw, userinfo)
    return Session(
        provider=config.name,
        subject=claims.sub,
        email=_text(merged.get("email")),
        name=_text(merged.get("name")),
        groups=_groups(merged.get(config.groups_claim)) if groups is None else groups,
        claims=merged,
        acr=claims.acr,
        amr=claims.amr,
        mfa=is_mfa(claims.acr, claims.amr, config.mfa),
        # Unknown stays unknown: taking "now" would make a silent sign-on to an IdP session
        # hours old look fresh to max_auth_age (which then asks for one with max_age).
        auth_time=claims.auth_time,
        created=now,
        last_seen=now,
        refreshed=now,
        refresh_token=tokens.refresh_token,
        # ~1 KB a session, kept only for an IdP whose sign-out wants it back: OIDC RP-Initiated
        # Logout 1.0 section 2 makes id_token_hint RECOMMENDED; client_id serves the others.
        id_token=tokens.id_token if config.logout_id_token_hint else None,
        idp_session=claims.sid,
    )


def session_refreshed(config: IdentityProviderConfig, session: Session, userinfo: Mapping[str, Any],
                      tokens: TokenResponse, now: float, groups: tuple[str, ...] | None = None) -> Session:
    """The session with the user's current groups and claims; authentication facts unchanged.

    ``groups`` (from a groups source such as Graph) over userinfo's; without either, unchanged.
    """
    return session_with_claims(config, session, userinfo, groups=groups).replace(
        refreshed=now,
        refresh_token=tokens.refresh_token or session.refresh_token,
        id_token=(tokens.id_token or session.id_token) if config.logout_id_token_hint else None,
    )


def session_with_claims(config: IdentityProviderConfig, session: Session, changed: Mapping[str, Any],
                        groups: tuple[str, ...] | None = None) -> Session:
    """The session with the claims in ``changed`` (userinfo, a CAEP token-claims-change) over its own."""
    merged = user_claims({}, changed)
    if groups is None:
        groups = _groups(merged.get(config.groups_claim)) if config.groups_claim in merged else session.groups
    return session.replace(
        email=_text(merged.get("email")) or session.email,
        name=_text(merged.get("name")) or session.name,
        groups=groups,
        claims={**session.claims, **merged},
    )


def session_without_mfa(config: IdentityProviderConfig, session: Session) -> Session:
    """The session as if its sign-in had used no second factor (CAEP assurance-level-change, decrease):
    no MFA, and neither the acr nor the amr values that say there was one."""
    mfa = config.mfa
    return session.replace(mfa=False, acr=None if session.acr in mfa.mfa_acr else session.acr,
                           amr=tuple(method for method in session.amr if method not in mfa.accepted_amr))
