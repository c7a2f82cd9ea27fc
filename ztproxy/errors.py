"""The ztproxy error tree: every failure a user or operator can see has a stable code.

    ZtproxyError                      code                 HTTP
    ├── ConfigError                   config-invalid       (startup / check; never HTTP)
    └── RequestError                                       (mapped to a page in pages/)
        ├── BadRequest                bad-request          400
        │   └── PathRejected          bad-path             400
        ├── PayloadTooLarge           payload-too-large    413
        ├── UriTooLong                uri-too-long         414
        ├── HeadersTooLarge           headers-too-large    431
        ├── RouteNotFound             no-route             404
        ├── LoginFailed               login-failed         400
        ├── AuthenticationRequired    authentication-required 401
        │   ├── StepUpRequired        insufficient-user-authentication 401
        │   └── InvalidToken          invalid-token        401
        ├── AccessDenied              access-denied        403
        │   └── InsufficientScope     insufficient-scope   403
        ├── AccessRequestInvalid      access-request-invalid 400
        ├── AccessRequestConflict     access-request-conflict 409
        ├── ExpectationFailed         expectation-failed   417
        ├── InternalError             internal-error       500
        ├── ServiceUnavailable                             503
        │   ├── SessionStoreUnavailable  session-store-unavailable 503
        │   ├── TokenServiceUnavailable  token-service-unavailable 503
        │   └── IdentityProviderUnavailable idp-unavailable  503
        │       └── SignInMisconfigured sign-in-misconfigured 503
        └── UpstreamFailure                                502
            ├── UpstreamUnavailable   upstream-unavailable 502
            └── UpstreamTimeout       upstream-timeout     504

Third-party exceptions are translated at the boundary where they occur
(``raise UpstreamTimeout(...) from exc``); the mapping to HTTP responses
happens in one place, :mod:`ztproxy.pages`. This module imports no aiohttp.
"""

from __future__ import annotations

from dataclasses import dataclass


class ZtproxyError(Exception):
    """Base of every error ztproxy raises on purpose."""

    code: str = "error"


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file, located by YAML path and line."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.path or '<root>'}: {self.message}"


class ConfigError(ZtproxyError):
    """The configuration is invalid; carries every issue found, not just the first."""

    code = "config-invalid"

    def __init__(self, issues: list[ConfigIssue], source: str = "") -> None:
        self.issues = sorted(issues, key=lambda i: (i.line or 0, i.path))
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.source}: " if self.source else ""
        count = len(self.issues)
        lines = [f"{head}{count} configuration error{'s' if count != 1 else ''}"]
        lines.extend(f"  {issue}" for issue in self.issues)
        return "\n".join(lines)


class RequestError(ZtproxyError):
    """A request cannot be served; rendered as an HTML or JSON page.

    ``detail`` is shown to the user: plain words, never internal addresses.
    """

    status: int = 500
    title: str = "Error"
    hint: str = ""
    headers: tuple[tuple[str, str], ...] = ()  # added to the response (WWW-Authenticate, Retry-After)
    link: tuple[str, str] | None = None  # (a path of the proxy's own, its label): what to do next

    def __init__(self, detail: str = "", *, hint: str | None = None,
                 headers: tuple[tuple[str, str], ...] = (), link: tuple[str, str] | None = None) -> None:
        self.detail = detail
        if hint is not None:
            self.hint = hint
        if headers:
            self.headers = headers
        if link is not None:
            self.link = link
        super().__init__(detail or self.title)


class BadRequest(RequestError):
    code = "bad-request"
    status = 400
    title = "Bad request"
    hint = "The request was malformed. Check the address and try again."


class PathRejected(BadRequest):
    """The request path cannot be canonicalised safely (encoded slash, control character...)."""

    code = "bad-path"
    hint = "The address contains characters that are not allowed. Check the link you followed."


class PayloadTooLarge(RequestError):
    code = "payload-too-large"
    status = 413
    title = "Request too large"
    hint = "The upload is larger than this application accepts."


class UriTooLong(RequestError):
    code = "uri-too-long"
    status = 414
    title = "Address too long"
    hint = "The address (URL) is longer than this server accepts. Check the link you followed."


class HeadersTooLarge(RequestError):
    code = "headers-too-large"
    status = 431
    title = "Request headers too large"
    hint = "Your browser sent too many or too large headers. Clearing this site's cookies usually helps."


class RouteNotFound(RequestError):
    code = "no-route"
    status = 404
    title = "Not found"
    hint = "No application is published at this address. Check the link or ask your administrator."


class LoginFailed(RequestError):
    """A sign-in could not be completed: unknown or replayed state, an IdP error, a bad token."""

    code = "login-failed"
    status = 400
    title = "Sign-in failed"
    hint = "Go back to the application's address to sign in again."


class AuthenticationRequired(RequestError):
    """An API client without a session (browsers are redirected to sign in instead)."""

    code = "authentication-required"
    status = 401
    title = "Sign-in required"
    hint = "Sign in through your browser, or send valid credentials."


class StepUpRequired(AuthenticationRequired):
    """RFC 9470: the session is valid but its authentication is too weak or too old."""

    code = "insufficient-user-authentication"
    title = "Stronger sign-in required"
    hint = "Sign in again with the required factor, then retry."


class InvalidToken(AuthenticationRequired):
    """RFC 6750 3.1: the bearer token is malformed, expired, revoked or not for this application."""

    code = "invalid-token"
    title = "Invalid access token"
    hint = "Get a new access token for this application from your authorization server, then retry."


class AccessDenied(RequestError):
    code = "access-denied"
    status = 403
    title = "Access denied"
    hint = "If you believe you should have access, contact your administrator with the request id."

    def __init__(self, detail: str = "", *, reasons: tuple[str, ...] = (), hint: str | None = None,
                 link: tuple[str, str] | None = None, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(detail, hint=hint, link=link, headers=headers)
        self.reasons = reasons


class InsufficientScope(AccessDenied):
    """RFC 6750 3.1: the token is valid but lacks a scope the application requires."""

    code = "insufficient-scope"
    title = "Insufficient scope"
    hint = "Ask your authorization server for a token with the scope named in WWW-Authenticate."


class AccessRequestInvalid(RequestError):
    """A just-in-time access request or decision with bad input: no reason, too long, no such route."""

    code = "access-request-invalid"
    status = 400
    title = "Access request not valid"
    hint = "Correct the form and send it again."


class AccessRequestConflict(RequestError):
    """A decision on an access request that is no longer possible: decided, cancelled, expired."""

    code = "access-request-conflict"
    status = 409
    title = "Access request already settled"
    hint = "Reload the access requests page to see where it stands."


class ExpectationFailed(RequestError):
    code = "expectation-failed"
    status = 417
    title = "Expectation failed"
    hint = "Only 'Expect: 100-continue' is supported."


class InternalError(RequestError):
    """Something unexpected broke inside the proxy; details go to the log, never to the user."""

    code = "internal-error"
    status = 500
    title = "Internal error"
    hint = "Something went wrong inside the proxy. Try again; if it persists, contact your administrator."


class ServiceUnavailable(RequestError):
    code = "service-unavailable"
    status = 503
    title = "Service unavailable"
    hint = "Try again in a moment. If it persists, contact your administrator."
    headers: tuple[tuple[str, str], ...] = (("Retry-After", "5"),)


class SessionStoreUnavailable(ServiceUnavailable):
    """The session store cannot be reached: fail closed, never guess."""

    code = "session-store-unavailable"
    title = "Sign-in service unavailable"
    hint = "Sessions cannot be checked right now, so access is paused. Try again in a moment."


class TokenServiceUnavailable(ServiceUnavailable):
    """The issuer of a bearer token cannot be asked about it (keys, introspection): fail closed."""

    code = "token-service-unavailable"
    title = "Token service unavailable"
    hint = "The access token cannot be checked right now, so the request is refused. Try again in a moment."


class IdentityProviderUnavailable(ServiceUnavailable):
    code = "idp-unavailable"
    title = "Sign-in unavailable"
    hint = "The identity provider cannot be reached, so new sign-ins are not possible right now. Try again in a moment."


class SignInMisconfigured(IdentityProviderUnavailable):
    """The IdP refuses the proxy's own credentials (invalid_client): no user can fix that."""

    code = "sign-in-misconfigured"
    title = "Sign-in is misconfigured"
    hint = ("The identity provider does not accept this proxy's credentials, so nobody can sign in here. "
            "Tell your administrator, with the request id below.")
    headers = ()  # retrying will not help


class UpstreamFailure(RequestError):
    code = "upstream-error"
    status = 502
    title = "Bad gateway"
    hint = "The application behind this address failed to answer. Try again in a moment."


class UpstreamUnavailable(UpstreamFailure):
    code = "upstream-unavailable"


class UpstreamTimeout(UpstreamFailure):
    code = "upstream-timeout"
    status = 504
    title = "Gateway timeout"
    hint = "The application took too long to answer. Try again in a moment."
