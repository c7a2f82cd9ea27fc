"""The browser's way in: send it to the IdP (code flow + PKCE), take it back at the callback.

The login in progress lives in a cookie sealed with the server's cookie secrets (no store
write for anonymous visitors): at most ``MAX_PENDING`` logins per browser, each expiring
after ``login_timeout``. ``state`` binds the callback to the browser that started it and is
single-use (a store marker refuses a replay even with a copied cookie); ``nonce`` binds the
ID token to it; the PKCE verifier binds the code to it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge as _untyped_s256
from multidict import MultiMapping

from ztproxy import metrics
from ztproxy.cookies import CookieSettings, read_ticket
from ztproxy.errors import AccessDenied, IdentityProviderUnavailable, LoginFailed
from ztproxy.oidc.claims import session_from_login
from ztproxy.oidc.parameters import repeated
from ztproxy.oidc.provider import Provider, TokenRefused, TokenResponse
from ztproxy.oidc.redirects import ReturnUrls
from ztproxy.oidc.tokens import IdTokenClaims, TokenInvalid
from ztproxy.pages import page_for
from ztproxy.policy.model import StepUp
from ztproxy.policy.reasons import MFA_REQUIRED
from ztproxy.risk.context import RiskState
from ztproxy.sessions.manager import SessionManager
from ztproxy.sessions.model import Session
from ztproxy.sessions.sealing import CookieSealer
from ztproxy.signals.events import disabled_key

_log = structlog.get_logger("ztproxy.login")

MAX_PENDING = 5  # logins in progress per browser (several tabs); the oldest is dropped
CALLBACK_PATH = "/.ztproxy/callback"
_LOGIN_COOKIE_PATH = "/.ztproxy/"
_PURPOSE = "login"
# RFC 6749 4.1.2 / 4.1.2.1, RFC 9207 2, OIDC Session Management 3: the authorization response.
_RESPONSE_PARAMETERS = ("code", "state", "iss", "error", "error_description", "error_uri", "session_state")
s256_challenge: Callable[[str], str] = _untyped_s256  # RFC 7636 4.2, from authlib (untyped there)


@dataclass(frozen=True, slots=True)
class PendingLogin:
    state: str
    nonce: str
    verifier: str
    return_to: str
    provider: str
    started: float
    max_age: float | None  # sent to the IdP: auth_time must then be this recent
    mfa: bool  # a second factor was asked for


class LoginFlow:
    def __init__(self, *, providers: Mapping[str, Provider], sessions: SessionManager, sealer: CookieSealer,
                 cookies: CookieSettings, return_urls: ReturnUrls, public_url: str, login_timeout: float,
                 lifetime: float, context_of: Callable[[web.Request], RiskState] | None = None) -> None:
        self.providers = providers
        self.sessions = sessions
        self.sealer = sealer
        self.cookies = cookies
        self.return_urls = return_urls
        # RFC 9700 2.1 / OIDC Core 3.1.2.1: one exact redirect URI, registered at the IdP.
        self.redirect_uri = f"{public_url}{CALLBACK_PATH}"
        self.login_timeout = login_timeout
        self.lifetime = lifetime
        self.context_of = context_of  # the sign-in's context, sealed with the session (ztproxy.risk)

    # --- the way out ----------------------------------------------------------------------

    async def begin(self, request: web.Request, provider: Provider, *, return_to: str,
                    step_up: StepUp | None = None) -> web.Response:
        """Redirect the browser to the IdP; ``step_up`` asks for MFA and/or a fresh login."""
        # A login sent to an IdP that is down strands the user on a browser error: refuse it
        # here (the 503 page) unless the IdP's last word, at most CURRENT_FOR old, was an answer.
        if not await provider.reachability.confirm():
            metrics.login_refused(provider.name, "idp-unreachable")
            raise IdentityProviderUnavailable()
        metadata = await provider.metadata()
        now = time.time()
        pending = PendingLogin(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(64),  # RFC 7636 4.1: 43-128 unreserved characters
            return_to=self.return_urls.checked(return_to),
            provider=provider.name,
            started=now,
            max_age=step_up.max_age if step_up else None,
            mfa=bool(step_up and step_up.mfa),
        )
        params: dict[str, Any] = {
            "nonce": pending.nonce,
            "code_challenge": s256_challenge(pending.verifier),
            "code_challenge_method": "S256",
        }
        # OIDC Core 5.5: ask for auth_time always (max_auth_age rules need it), and for MFA an
        # essential acr claim, which the IdP must satisfy or refuse (5.5.1.1).
        wanted: dict[str, Any] = {"auth_time": {"essential": True}}
        acr_values = provider.config.mfa.acr_values
        if pending.mfa and acr_values:
            params["acr_values"] = " ".join(acr_values)
            wanted["acr"] = {"essential": True, "values": list(acr_values)}
        if metadata.get("claims_parameter_supported"):
            params["claims"] = orjson.dumps({"id_token": wanted}).decode()
        if pending.max_age is not None:
            params["max_age"] = str(int(pending.max_age))
            params["prompt"] = "login"
        params.update(provider.preset.authorization_parameters(provider.config))  # hd for Google...
        location = prepare_grant_uri(str(metadata["authorization_endpoint"]), provider.config.client_id, "code",
                                     redirect_uri=self.redirect_uri, scope=" ".join(provider.config.scopes),
                                     state=pending.state, **params)
        logins = [login for login in self._pending(request, now) if login.state != pending.state]
        logins = [*logins[-(MAX_PENDING - 1):], pending]
        response = web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})
        self._save_pending(response, logins, now)
        _log.info("login_started", provider=provider.name, step_up_mfa=pending.mfa, max_age=pending.max_age)
        metrics.login_started(provider.name)
        return response

    # --- the way back ---------------------------------------------------------------------

    async def callback(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        now = time.time()
        query = request.query
        # RFC 6749 3.1: no parameter more than once. Refused before the state is looked up or
        # spent, so the tampered URL neither completes nor cancels the login in progress.
        if (parameter := repeated(query, _RESPONSE_PARAMETERS)) is not None:
            raise _refused(None, "repeated-parameter", "The sign-in response carried a parameter more than once, "
                                                       "so it may have been tampered with.", parameter=parameter)
        state = query.get("state", "")
        logins = self._pending(request, now)
        pending = next((login for login in logins if hmac.compare_digest(login.state, state)), None) \
            if state else None
        if pending is None:
            metrics.login_refused("-", "state-unknown")
            raise LoginFailed("This sign-in was not started in this browser, has expired, or was already "
                              "completed.")
        remaining = [login for login in logins if login is not pending]
        provider = self.providers.get(pending.provider)
        if provider is None:
            raise LoginFailed("This sign-in was started with an identity provider that is no longer configured.")
        # On failure the state is spent all the same (the store marker); the cookie keeps it
        # until it expires, harmlessly.
        response = await self._complete(request, provider, pending, now)
        self._save_pending(response, remaining, now)
        return response

    async def _complete(self, request: web.Request, provider: Provider, pending: PendingLogin,
                        now: float) -> web.Response:
        """The authorization response checked, its code redeemed, the session started."""
        query = request.query
        await _check_issuer(query, provider)
        await self._spend_state(provider, pending)
        code = _authorization_code(query, provider)
        tokens, claims = await self._redeem(code, provider, pending)
        refusal = provider.preset.refusal(provider.config, claims.raw)
        if refusal is not None:  # e.g. Google: the account is not of the Workspace domain
            raise _refused(provider, refusal.reason, refusal.detail)
        userinfo = await _userinfo(provider, tokens, claims)
        groups = await provider.groups(tokens.access_token, claims.raw)
        session = session_from_login(provider.config, claims, userinfo, tokens, now, groups=groups)
        if self.context_of is not None:
            session = session.replace(risk=self.context_of(request))
        await self._check_enabled(provider, session)
        ticket = await self.sessions.start(session, now, replacing=read_ticket(request, self.cookies))
        _log.info("login_completed", provider=provider.name, subject=session.subject, mfa=session.mfa,
                  acr=session.acr, session=ticket.public_id)
        metrics.login_completed(provider.name)
        response = self._landing(request, pending, session)
        self.cookies.set(response, self.cookies.session_name, ticket.cookie_value(), max_age=self.lifetime)
        return response

    async def _check_enabled(self, provider: Provider, session: Session) -> None:
        """A security signal disabled this account (RISC account-disabled): no new session."""
        accounts = [f"sub:{session.subject}", *([f"email:{session.email}"] if session.email else [])]
        for account in accounts:
            if await self.sessions.store.get(disabled_key(provider.name, account)) is not None:
                raise _refused(provider, "account-disabled", "This account is disabled. Contact your administrator.")

    async def _spend_state(self, provider: Provider, pending: PendingLogin) -> None:
        # Single use, even for a replay that carries a copy of the login cookie.
        marker = "once:state:" + hashlib.sha256(pending.state.encode()).hexdigest()
        if not await self.sessions.store.put(marker, b"", self.login_timeout, only_new=True):
            raise _refused(provider, "state-replayed", "This sign-in was already completed.")

    async def _redeem(self, code: str, provider: Provider,
                      pending: PendingLogin) -> tuple[TokenResponse, IdTokenClaims]:
        """The tokens ``code`` is exchanged for, and the verified claims of their ID token."""
        try:
            tokens = await provider.exchange_code(code, verifier=pending.verifier, redirect_uri=self.redirect_uri)
        except TokenRefused as exc:
            raise _refused(provider, "code-refused", "The identity provider refused to complete this sign-in (the "
                                                     "link may have been used already).", error=str(exc)) from exc
        if tokens.id_token is None:
            raise _refused(provider, "no-id-token", "The identity provider's answer carried no ID token.")
        try:
            claims = await provider.validate_id_token(tokens.id_token, nonce=pending.nonce, max_age=pending.max_age,
                                                      access_token=tokens.access_token)
        except TokenInvalid as exc:
            raise _refused(provider, f"id-token-{exc.reason}", "The identity provider's answer could not be "
                                                               "verified.", error=str(exc)) from exc
        return tokens, claims

    def _landing(self, request: web.Request, pending: PendingLogin, session: Session) -> web.Response:
        """Back to the page the sign-in started from, unless it still lacks the second factor asked for."""
        if pending.mfa and not session.mfa:
            # Redirecting back would only ask again, forever: say what happened instead.
            return page_for(request, AccessDenied(
                "You signed in, but without a second factor, which this application requires.",
                reasons=(MFA_REQUIRED,),
                hint="Sign in again and use your second factor; if you have none, ask your administrator."))
        return web.Response(status=303, headers={
            "Location": self.return_urls.checked(pending.return_to), "Cache-Control": "no-store"})

    # --- the login cookie -----------------------------------------------------------------

    def _pending(self, request: web.Request, now: float) -> list[PendingLogin]:
        token = request.cookies.get(self.cookies.login_name)
        if not token:
            return []
        plain = self.sealer.unseal(token, purpose=_PURPOSE, now=now, max_age=self.login_timeout)
        if plain is None:
            return []
        try:
            entries = [PendingLogin(**entry) for entry in orjson.loads(plain)]
        except (orjson.JSONDecodeError, TypeError):
            return []
        return [entry for entry in entries if now - entry.started < self.login_timeout]

    def _save_pending(self, response: web.StreamResponse, logins: list[PendingLogin], now: float) -> None:
        if not logins:
            self.cookies.clear(response, self.cookies.login_name, path=_LOGIN_COOKIE_PATH)
            return
        sealed = self.sealer.seal(orjson.dumps([asdict(login) for login in logins]), purpose=_PURPOSE, now=now)
        self.cookies.set(response, self.cookies.login_name, sealed, max_age=self.login_timeout,
                         path=_LOGIN_COOKIE_PATH)


async def _check_issuer(query: MultiMapping[str], provider: Provider) -> None:
    metadata = await provider.metadata()
    issuer = query.get("iss")
    # RFC 9207 2.4: the iss response parameter must match; required once the IdP advertises it.
    if issuer is not None and issuer != provider.config.issuer:
        raise _refused(provider, "iss-mismatch", "The sign-in response came from an unexpected identity provider.")
    if issuer is None and metadata.get("authorization_response_iss_parameter_supported"):
        raise _refused(provider, "iss-missing", "The sign-in response did not say which identity provider sent it.")


def _authorization_code(query: MultiMapping[str], provider: Provider) -> str:
    """The code the response carries; the IdP's error, in words for the user, when it carries one."""
    if "error" in query:
        error = query.get("error", "")[:64]
        detail = "The identity provider reported an error during sign-in."
        if error in ("access_denied", "login_required", "interaction_required", "consent_required"):
            detail = "The identity provider did not complete the sign-in (it was cancelled or refused)."
        elif error == "unmet_authentication_requirements":
            detail = "The identity provider could not verify you with the required second factor."
        raise _refused(provider, "idp-error", detail, error=error,
                       description=query.get("error_description", "")[:200])
    code = query.get("code")
    if not code:
        raise _refused(provider, "no-code", "The sign-in response carried no authorization code.")
    return code


async def _userinfo(provider: Provider, tokens: TokenResponse, claims: IdTokenClaims) -> dict[str, Any]:
    """The userinfo endpoint's claims, when the provider is to be asked (``use_userinfo``); else none."""
    if not (provider.config.use_userinfo and tokens.access_token):
        return {}
    try:
        userinfo = await provider.userinfo(tokens.access_token)
    except TokenRefused as exc:
        raise _refused(provider, "userinfo-refused", "The identity provider refused to say who you are.",
                       error=str(exc)) from exc
    # OIDC Core 5.3.2: the userinfo sub must be the ID token's, or it is someone else's.
    if userinfo and userinfo.get("sub") != claims.sub:
        raise _refused(provider, "userinfo-sub-mismatch", "The identity provider's answers disagree about "
                                                          "who you are.")
    return userinfo


def _refused(provider: Provider | None, reason: str, detail: str, **fields: str) -> LoginFailed:
    """Log and count a refused sign-in; the error to raise, with ``detail`` for the user.

    ``provider`` is None when the refusal comes before the login in progress is known.
    """
    name = provider.name if provider is not None else "-"
    _log.warning("login_refused", reason=reason, provider=name, **fields)
    metrics.login_refused(name, reason)
    return LoginFailed(detail)
