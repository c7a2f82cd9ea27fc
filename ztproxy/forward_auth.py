"""Forward-auth: ztproxy as the decision point of a proxy that people already run.

nginx (``auth_request``), Caddy (``forward_auth``), Traefik (``forwardAuth``) and Envoy
(``ext_authz``) ask an HTTP endpoint about each request before they serve it. ztproxy
answers at ``/.ztproxy/auth`` with the same pipeline as the full proxy (sessions, step-up,
device posture, policy, assertion, decision log); only the way in and the answer differ:

- In: the original request as the calling proxy describes it (``describe``), believed
  only from ``server.trusted_proxies``: nginx's ``X-Original-URL`` and ``X-Original-Method``
  win; else ``X-Forwarded-Method``, ``-Proto``, ``-Host``, ``-Uri`` (Traefik, Caddy); else
  Envoy's ``/.ztproxy/auth/<original path>`` with the original method and ``Host``. From any
  other peer the request is judged as a request for ``/.ztproxy/auth`` itself, which no
  route allows.
- Out (``shape``): 200 with every identity header the route can send, present and empty
  when there is no value, so the calling proxy's copy replaces whatever the client sent.
  nginx turns anything but 2xx, 401 and 403 into its own 500, so in its form a browser
  that must sign in gets 401 with ``X-Ztproxy-Sign-In`` and every other refusal 403.

``/.ztproxy/start?rd=URL`` starts the sign-in that URL needs and returns there, and
``/.ztproxy/denied`` renders the reasons a request was refused (nginx never forwards the
body of an auth answer), without writing a second decision event. No aiohttp here.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

from multidict import MultiMapping

from ztproxy.assertion import ASSERTION_HEADER, EMAIL_HEADER, GROUPS_HEADER, USER_HEADER
from ztproxy.errors import BadRequest

AUTH_PATH = "/.ztproxy/auth"
START_PATH = "/.ztproxy/start"
DENIED_PATH = "/.ztproxy/denied"
SIGN_IN_HEADER = "X-Ztproxy-Sign-In"
# nginx: auth_request understands 2xx, 401 and 403 only (anything else becomes its own 500).
_NGINX_STATUSES = frozenset({401, 403})
_MAX_URL = 8192


class Kind(enum.Enum):
    AUTH = "auth"  # may this request pass? (the calling proxy asks)
    DENIED = "denied"  # why was it refused? (a page for the client)
    START = "start"  # sign in for this URL, then go there (the client's browser asks)


class Form(enum.Enum):
    """How the calling proxy describes the original request, and so which answers it understands."""

    NGINX = "nginx"  # X-Original-URL / X-Original-Method; only 2xx, 401, 403
    FORWARDED = "forwarded"  # X-Forwarded-Method/-Proto/-Host/-Uri: Traefik, Caddy
    ENVOY = "envoy"  # /.ztproxy/auth/<original path>: Envoy's ext_authz HTTP service
    BROWSER = "browser"  # /.ztproxy/start: the URL is in the query
    UNDESCRIBED = "undescribed"  # an untrusted peer, or nothing described: judged as itself

    @property
    def strict_statuses(self) -> bool:
        """Whether answers must be 2xx, 401 or 403 (nginx's, and anyone's we cannot tell apart)."""
        return self in (Form.NGINX, Form.UNDESCRIBED)


@dataclass(frozen=True, slots=True)
class Original:
    """The request the calling proxy asks about, as it describes it (not yet canonical)."""

    method: str
    scheme: str
    authority: str  # host[:port] as the client addressed it
    target: str  # path and query, raw


@dataclass(frozen=True, slots=True)
class Question:
    """A forward-auth request: what it asks, in which form, about which original request."""

    kind: Kind
    form: Form
    original: Original | None  # None: judged as a request for the endpoint itself, or unreadable
    problem: str | None = None  # why the description could not be read (a bad request)


def endpoint_kind(path: str) -> Kind | None:
    """The forward-auth endpoint a canonical path names, if any."""
    if path == AUTH_PATH or path.startswith(AUTH_PATH + "/"):
        return Kind.AUTH
    if path == DENIED_PATH:
        return Kind.DENIED
    if path == START_PATH:
        return Kind.START
    return None


def _one(headers: MultiMapping[str], name: str) -> str | None:
    values = headers.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"More than one {name} header.")
    return values[0].strip() if values else None


def describe(kind: Kind, *, raw_path: str, query: str, method: str, headers: MultiMapping[str], trusted: bool,
             scheme: str) -> Question:
    """The question a request to a forward-auth endpoint asks (``raw_path`` as the client sent it).

    A description that cannot be read still says the form, so the refusal (``problem``)
    is answered as the calling proxy understands.
    """
    form = _form(kind, raw_path, headers, trusted)
    try:
        return Question(kind, form, _original(form, raw_path, query, method, headers, scheme))
    except BadRequest as problem:
        return Question(kind, form, None, problem=problem.detail)


def _form(kind: Kind, raw_path: str, headers: MultiMapping[str], trusted: bool) -> Form:
    if kind is Kind.START:
        return Form.BROWSER
    if not trusted:
        return Form.UNDESCRIBED
    if "X-Original-URL" in headers:
        return Form.NGINX
    if "X-Forwarded-Uri" in headers or "X-Forwarded-Method" in headers:
        return Form.FORWARDED
    if kind is Kind.AUTH and raw_path.startswith(AUTH_PATH + "/"):
        return Form.ENVOY
    return Form.UNDESCRIBED


def _original(form: Form, raw_path: str, query: str, method: str, headers: MultiMapping[str],
              scheme: str) -> Original | None:
    if form is Form.BROWSER:
        return _start_original(query)
    if form is Form.NGINX:
        url = _one(headers, "X-Original-URL") or ""
        return _from_url(_one(headers, "X-Original-Method") or method, url)
    if form is Form.FORWARDED:
        return Original(method=_method(_one(headers, "X-Forwarded-Method") or method),
                        scheme=_scheme(_one(headers, "X-Forwarded-Proto") or scheme),
                        authority=_one(headers, "X-Forwarded-Host") or _one(headers, "Host") or "",
                        target=_one(headers, "X-Forwarded-Uri") or "/")
    if form is Form.ENVOY:
        # Envoy prefixes the original path (query included) with the service's path_prefix.
        return Original(method=_method(method), scheme=_scheme(_one(headers, "X-Forwarded-Proto") or scheme),
                        authority=_one(headers, "Host") or "", target=raw_path[len(AUTH_PATH):])
    return None


def _method(value: str) -> str:
    # RFC 9110 5.6.2: a method is a token.
    if not value or len(value) > 32 or not value.isascii() or not value.replace("-", "").isalnum():
        raise BadRequest("The original request's method is not valid.")
    return value.upper()


def _scheme(value: str) -> str:
    scheme = value.split(",", 1)[0].strip().lower()
    if scheme not in ("http", "https"):
        raise BadRequest("The original request's scheme must be http or https.")
    return scheme


@functools.lru_cache(maxsize=4096)  # a calling proxy asks about the same URLs again and again
def _from_url(method: str, url: str) -> Original:
    if len(url) > _MAX_URL or not url.isascii():
        raise BadRequest("The original request's URL is not valid.")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise BadRequest("The original request's URL is not valid.") from exc
    if not parts.netloc or parts.username is not None or parts.password is not None:
        raise BadRequest("The original request's URL must be absolute, without user information.")
    target = url[len(f"{parts.scheme}://{parts.netloc}"):] or "/"
    if "#" in target:
        raise BadRequest("The original request's URL must not have a fragment.")
    return Original(method=_method(method), scheme=_scheme(parts.scheme), authority=parts.netloc, target=target)


def _start_original(query: str) -> Original:
    values = parse_qs(query, keep_blank_values=True).get("rd", [])
    if len(values) != 1:
        raise BadRequest("Say where to go after signing in, once: /.ztproxy/start?rd=<URL>.")
    return _from_url("GET", values[0])


def sign_in_path(return_to: str) -> str:
    """``/.ztproxy/start?rd=...``: sign in as ``return_to`` needs, then go there."""
    return f"{START_PATH}?rd={quote(return_to, safe='')}"


def sign_in_url(return_to: str) -> str:
    """The start URL on the host of ``return_to`` (one of the proxy's own hosts)."""
    parts = urlsplit(return_to)
    return f"{parts.scheme}://{parts.netloc}{sign_in_path(return_to)}"


def strict_status(status: int) -> int:
    """The status an nginx-form auth answer carries: 2xx, 401 and 403 as they are, anything else 403."""
    return status if 200 <= status < 300 or status in _NGINX_STATUSES else 403


def allowed_headers(claim_headers: Mapping[str, str], values: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """Every identity header a route can send, with its value from ``values`` or empty.

    Present even when empty, so that the calling proxy's copy replaces whatever the client
    sent under that name (stock nginx cannot delete headers by pattern; Caddy 2.6 copies
    a placeholder's text for a header that is missing).
    """
    given: Mapping[str, str] = {name.lower(): value for name, value in values}
    names = (ASSERTION_HEADER, USER_HEADER, EMAIL_HEADER, GROUPS_HEADER, *claim_headers)
    return [(name, given.get(name.lower(), "")) for name in names]
