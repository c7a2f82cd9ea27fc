"""A browserless user agent for integration tests: cookies, manual redirects, HTML forms.

It behaves like a browser without JavaScript, one hop at a time, so a test can look at every
redirect (``history``) and stop before a given origin to inspect or replay a callback URL::

    async with UserAgent() as ua:
        callback = await ua.login(app_url, "alice", ALICE_PASSWORD, stop_at=rp_origin)
        callback.location            # http://rp/.../callback?code=...&state=...&iss=...

``login`` works for any relying party whose sign-in redirects to the demo IdP (or any OP whose
pages have forms with ``username``/``password`` and ``code`` fields). Forms are parsed with the
standard library's HTML parser; a form whose fields are all hidden and that has no named button
(the "submitting callback" pages browsers post with JavaScript) is submitted automatically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from types import TracebackType
from urllib.parse import urljoin

import aiohttp
import pyotp
from multidict import CIMultiDictProxy
from yarl import URL

MAX_HOPS = 30
REDIRECTS = frozenset({301, 302, 303, 307, 308})

StopAt = str | Callable[[URL], bool] | None


@dataclass
class Form:
    action: str  # absolute URL
    method: str  # "GET" or "POST"
    fields: dict[str, str] = field(default_factory=dict)  # every named input, with its value
    hidden: set[str] = field(default_factory=set)  # names of the hidden ones
    buttons: list[tuple[str, str]] = field(default_factory=list)  # named submit buttons: (name, value)
    id: str | None = None

    def has(self, name: str) -> bool:
        return name in self.fields

    @property
    def submits_itself(self) -> bool:
        """Only hidden fields and no named button: a page a browser would post with JavaScript."""
        return bool(self.fields) and set(self.fields) == self.hidden and not self.buttons


class _FormParser(HTMLParser):
    def __init__(self, base_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.forms: list[Form] = []
        self._by_id: dict[str, Form] = {}
        self._current: Form | None = None
        self._orphans: list[tuple[str, dict[str, str]]] = []  # controls with form="id", placed later

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._current = Form(action=urljoin(self.base_url, attributes.get("action") or self.base_url),
                                 method=(attributes.get("method") or "get").upper(), id=attributes.get("id"))
            self.forms.append(self._current)
            if self._current.id:
                self._by_id[self._current.id] = self._current
        elif tag in ("input", "button", "textarea", "select"):
            if "form" in attributes:  # HTML: a control may name its form by id, wherever it stands
                self._orphans.append((tag, attributes))
            elif self._current is not None:
                _add_control(self._current, tag, attributes)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None

    def close(self) -> None:
        super().close()
        for tag, attributes in self._orphans:
            form = self._by_id.get(attributes["form"])
            if form is not None:
                _add_control(form, tag, attributes)


def _add_control(form: Form, tag: str, attributes: Mapping[str, str]) -> None:
    name = attributes.get("name")
    kind = attributes.get("type", "submit" if tag == "button" else "text").lower()
    if kind in ("submit", "image"):
        if name:
            form.buttons.append((name, attributes.get("value", "")))
        return
    if not name or kind in ("button", "reset", "file"):
        return
    if kind in ("checkbox", "radio") and "checked" not in attributes:
        return
    form.fields[name] = attributes.get("value", "")
    if kind == "hidden":
        form.hidden.add(name)


@dataclass(frozen=True)
class Response:
    method: str
    url: str
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    @property
    def is_redirect(self) -> bool:
        return self.status in REDIRECTS and "Location" in self.headers

    @property
    def location(self) -> str | None:
        """The absolute redirect target, if this is a redirect."""
        return urljoin(self.url, self.headers["Location"]) if self.is_redirect else None

    def forms(self) -> list[Form]:
        parser = _FormParser(self.url)
        parser.feed(self.text)
        parser.close()
        return parser.forms

    def form(self, with_field: str | None = None) -> Form | None:
        """The first form (with a field of that name), or None."""
        return next((form for form in self.forms() if with_field is None or form.has(with_field)), None)


def _matches(stop_at: StopAt, url: str) -> bool:
    if stop_at is None:
        return False
    if callable(stop_at):
        return stop_at(URL(url))
    return URL(url).origin() == URL(stop_at).origin()


BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


class UserAgent:
    """A cookie-keeping HTTP client that follows redirects one by one and fills in forms."""

    def __init__(self, *, new_connection_per_request: bool = False, local_address: str | None = None,
                 cookie_jar: aiohttp.CookieJar | None = None) -> None:
        # unsafe=True: keep cookies for IP-address hosts (everything here is on 127.0.0.1).
        self.cookie_jar = cookie_jar if cookie_jar is not None else aiohttp.CookieJar(unsafe=True)
        # A new connection each time spreads requests over the workers of a multi-process server.
        # ``local_address`` (127.0.1.1, 127.0.2.1...): connect from it, as a client of that network.
        connector = aiohttp.TCPConnector(force_close=new_connection_per_request,
                                         local_addr=(local_address, 0) if local_address else None)
        # What a browser sends when it navigates: servers tell page loads from API calls by it.
        self.session = aiohttp.ClientSession(cookie_jar=self.cookie_jar, connector=connector,
                                             headers={"Accept": BROWSER_ACCEPT},
                                             timeout=aiohttp.ClientTimeout(total=15))
        self.history: list[Response] = []

    async def __aenter__(self) -> UserAgent:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self.session.close()

    async def request(self, method: str, url: str, data: Mapping[str, str] | None = None) -> Response:
        """One hop: no redirect is followed."""
        async with self.session.request(method, url, data=data, allow_redirects=False) as raw:
            response = Response(method=method, url=str(raw.url), status=raw.status, headers=raw.headers,
                                text=await raw.text(errors="replace"))
        self.history.append(response)
        return response

    async def get(self, url: str) -> Response:
        return await self.request("GET", url)

    async def follow(self, response: Response, *, stop_at: StopAt = None) -> Response:
        """Follow redirects until a page, or until the next hop would go to ``stop_at``.

        ``stop_at`` is an origin ("http://127.0.0.1:8000") or a predicate on the URL; the
        redirect pointing there is returned unfollowed (its ``location`` is the target).
        """
        for _ in range(MAX_HOPS):
            location = response.location
            if location is None or _matches(stop_at, location):
                return response
            # RFC 9110 15.4: 307/308 repeat the method and body; browsers turn the rest into GET.
            method = response.method if response.status in (307, 308) else "GET"
            response = await self.request(method, location)
        raise RuntimeError(f"more than {MAX_HOPS} redirects from {self.history[-MAX_HOPS].url}")

    async def navigate(self, url: str, *, stop_at: StopAt = None) -> Response:
        if _matches(stop_at, url):
            raise ValueError(f"{url} is already at the stop origin")
        return await self.follow(await self.get(url), stop_at=stop_at)

    async def submit(self, form: Form, values: Mapping[str, str] | None = None, *, button: str | None = None,
                     stop_at: StopAt = None) -> Response:
        """Submit a form as a browser would (its fields, ``values`` over them, one button), then follow."""
        data = {**form.fields, **(values or {})}
        chosen = next((b for b in form.buttons if b[0] == button), form.buttons[0] if form.buttons else None)
        if button is not None and (chosen is None or chosen[0] != button):
            raise ValueError(f"the form has no button named {button!r}")
        if chosen is not None:
            data[chosen[0]] = chosen[1]
        if form.method == "POST":
            response = await self.request("POST", form.action, data=data)
        else:
            response = await self.get(str(URL(form.action).with_query(data)))
        return await self.follow(response, stop_at=stop_at)

    async def login(self, start_url: str, username: str, password: str, totp_secret: str | None = None, *,
                    stop_at: StopAt = None) -> Response:
        """Go to ``start_url`` and sign in on the pages met on the way; return where it ends.

        That is the app's page after the last redirect, the redirect to ``stop_at``, or an OP
        page this cannot get past (wrong password: the form again, with the error; a code asked
        but no ``totp_secret``; an error page). Each step is submitted at most once.
        """
        response = await self.navigate(start_url, stop_at=stop_at)
        done: set[str] = set()
        for _ in range(MAX_HOPS):
            if response.is_redirect:
                return response  # stopped before stop_at
            if (form := response.form("password")) is not None:
                step, values = "password", {"username": username, "password": password}
            elif (form := response.form("code")) is not None:
                if totp_secret is None:
                    return response
                step, values = "code", {"code": pyotp.TOTP(totp_secret).now()}
            elif (form := next((f for f in response.forms() if f.submits_itself), None)) is not None:
                step, values = f"auto:{form.action}", {}
            else:
                return response
            if step in done:
                return response  # refused: the same step again
            done.add(step)
            response = await self.submit(form, values, stop_at=stop_at)
        raise RuntimeError("too many sign-in steps")
