"""Checks that span entries of the configuration, which no single field validator can see.

They run on the raw data parsed from YAML, not on validated models, so they also run
when some fields are invalid; they skip whatever pydantic already flagged (``flagged``
holds those paths) and never assume a shape they have not checked. Each returns issues
located with the document's YAML paths and lines:

- duplicate route names, two routes for the same host and path prefix;
- ``allow`` entries naming a policy not defined under ``policies``;
- a route's grant rules on different terms (``ztproxy.config.grants``);
- policies naming other policies (nesting is not supported);
- TLS certificate and key files that cannot be read;
- identity providers: unique names, routes naming one that exists, and route hosts the
  session cookie can reach from the public URL (the callback sets it there); the checks of
  each one's preset (:mod:`ztproxy.config.presets`), and options sections of no preset chosen;
- without an identity provider, no route whose every allow rule needs a signed-in user;
- with one, ``trusted_proxies`` (a balancer in front) needs ``public_url``;
- token issuers: unique names (identity providers' included), routes naming ones that exist,
  and only routes whose rules name services (the only ones that accept bearer tokens);
- workload identity: needs ``server.tls``; each trust bundle file readable, with certificates;
- security signals: transmitters need an identity provider; receivers name an existing route;
- gRPC routes: clients must be able to reach the listener over HTTP/2 (``server.http2``).
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

from cryptography import x509
from yarl import URL

from ztproxy.config.grants import conflicting_terms
from ztproxy.config.presets import option_sections, resolve_preset, with_defaults
from ztproxy.config.rules import IDENTITY_CRITERIA, SERVICE_CRITERIA
from ztproxy.config.values import split_listen
from ztproxy.errors import ConfigIssue

if TYPE_CHECKING:
    from ztproxy.config.source import Document, YamlPath

_TLS_FILES = {"cert_file": "the certificate", "key_file": "the private key",
              "client_ca_file": "the device CA certificate"}


def run(document: Document, flagged: Collection[YamlPath]) -> list[ConfigIssue]:
    """Every cross-entry problem in ``document``, except at paths in ``flagged``."""
    data = document.data
    if not isinstance(data, dict):
        return []
    context = _Context(document, flagged)
    routes = [(index, route) for index, route in enumerate(_list(data.get("routes")))
              if isinstance(route, dict)]
    policies = data.get("policies", {})
    issues = [*_duplicate_names(context, routes), *_duplicate_targets(context, routes)]
    if isinstance(policies, dict):  # otherwise pydantic reports the shape of policies
        issues.extend(_unknown_policies(context, routes, policies))
        issues.extend(_nested_policies(context, policies))
        issues.extend(context.issue(path, message) for path, message in conflicting_terms(routes, policies)
                      if not context.skip(path))
    server = data.get("server")
    if isinstance(server, dict) and isinstance(server.get("tls"), dict):
        issues.extend(_tls_files(context, server["tls"]))
    devices = data.get("devices")
    if isinstance(devices, dict) and devices.get("client_certificate") is not None \
            and not context.skip(("devices", "client_certificate")):
        tls = server.get("tls") if isinstance(server, dict) else None
        if not isinstance(tls, dict) or not tls.get("client_ca_file"):
            issues.append(context.issue(("devices", "client_certificate"),
                                        "device certificates need server.tls with client_ca_file (the CA that "
                                        "issues them), so the listener can ask for and verify them"))
    providers = [(index, p) for index, p in enumerate(_list(data.get("identity_providers"))) if isinstance(p, dict)]
    issues.extend(_providers(context, providers, routes))
    signals = data.get("signals")
    if isinstance(signals, dict) and _list(signals.get("transmitters")) and not providers \
            and not context.skip(("signals", "transmitters")):
        issues.append(context.issue(("signals", "transmitters"), "security signals act on signed-in users' "
                                                                  "sessions: configure identity_providers"))
    if isinstance(signals, dict):
        issues.extend(_receivers(context, _list(signals.get("receivers")), routes))
    issuers = [(index, i) for index, i in enumerate(_list(data.get("token_issuers"))) if isinstance(i, dict)]
    workloads = data.get("workload_identity")
    if isinstance(policies, dict):
        issues.extend(_token_issuers(context, issuers, providers, routes, policies, workloads=bool(workloads)))
    if isinstance(workloads, dict):
        issues.extend(_workload_identity(context, workloads, server))
    if providers and isinstance(server, dict) and server.get("trusted_proxies") and not server.get("public_url") \
            and not context.skip(("server", "trusted_proxies")):
        # Behind a balancer the listen address is an internal one: sign-in would send users there.
        issues.append(context.issue(("server", "trusted_proxies"),
                                    "server.trusted_proxies is set (a balancer is in front) but server.public_url is "
                                    "not: sign-in would return users to the internal listen address; set "
                                    "server.public_url to the address people use"))
    issues.extend(_grpc_without_http2(context, routes, server))
    if providers:
        issues.extend(_cookie_reach(context, data, routes))
    elif isinstance(policies, dict):
        issues.extend(_sign_in_without_provider(context, routes, policies))
    return issues


class _Context:
    def __init__(self, document: Document, flagged: Collection[YamlPath]) -> None:
        self.document = document
        self.flagged = flagged

    def skip(self, path: YamlPath) -> bool:
        """True when pydantic reported a problem at or inside ``path``."""
        return any(found[: len(path)] == path for found in self.flagged)

    def issue(self, path: YamlPath, message: str) -> ConfigIssue:
        return self.document.issue(path, message)

    def line(self, path: YamlPath) -> int | None:
        return self.document.line(path)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _duplicate_names(context: _Context, routes: list[tuple[int, dict[Any, Any]]]) -> Iterator[ConfigIssue]:
    first: dict[str, int | None] = {}
    for index, route in routes:
        name, path = route.get("name"), ("routes", index, "name")
        if not isinstance(name, str) or context.skip(path):
            continue
        if name in first:
            yield context.issue(path, f"duplicate route name {name!r} (first at line {first[name]})")
        else:
            first[name] = context.line(path)


def _duplicate_targets(context: _Context, routes: list[tuple[int, dict[Any, Any]]]) -> Iterator[ConfigIssue]:
    first: dict[tuple[str | None, str], tuple[int | None, str]] = {}
    for index, route in routes:
        host, prefix = route.get("host"), route.get("path", "/")
        if context.skip(("routes", index, "host")) or context.skip(("routes", index, "path")):
            continue
        if not (host is None or isinstance(host, str)) or not isinstance(prefix, str):
            continue
        # Matching is case-insensitive and ignores a trailing dot; no host means any host.
        target = (host.strip().lower().rstrip(".") if host is not None else None, prefix)
        name = route.get("name")
        label = f"route {name!r}" if isinstance(name, str) else f"routes[{index}]"
        if target in first:
            line, earlier = first[target]
            where = f"host {target[0]!r}" if target[0] is not None else "any host"
            yield context.issue(("routes", index),
                                f"duplicate route for {where} and path {prefix!r} "
                                f"(first at line {line}, {earlier})")
        else:
            first[target] = (context.line(("routes", index)), label)


def _reference(entry: Any, path: YamlPath) -> tuple[str, YamlPath] | None:
    """The policy an ``allow`` entry names (``- employees`` or ``- policy: employees``)."""
    if isinstance(entry, str):
        return entry, path
    if isinstance(entry, dict) and isinstance(entry.get("policy"), str):
        return entry["policy"], (*path, "policy")
    return None


def _unknown_policies(context: _Context, routes: list[tuple[int, dict[Any, Any]]],
                      policies: dict[Any, Any]) -> Iterator[ConfigIssue]:
    defined = [name for name in policies if isinstance(name, str)]
    for index, route in routes:
        entries = [(kind, position, entry) for kind in ("allow", "deny", "shadow")
                   for position, entry in enumerate(_list(route.get(kind)))]
        for kind, position, entry in entries:
            entry_path = ("routes", index, kind, position)
            found = _reference(entry, entry_path)
            if found is None or context.skip(entry_path) or found[0] in defined:
                continue
            name, path = found
            close = difflib.get_close_matches(name, defined, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ": define it under policies"
            yield context.issue(path, f"unknown policy {name!r}{hint}")


def _nested_policies(context: _Context, policies: dict[Any, Any]) -> Iterator[ConfigIssue]:
    for policy, rules in policies.items():
        for position, entry in enumerate(_list(rules)):
            entry_path = ("policies", policy, position)
            found = _reference(entry, entry_path)
            if found is None or context.skip(entry_path):
                continue
            name, path = found
            yield context.issue(path, f"policy {policy!r} names policy {name!r}: policies cannot contain "
                                      "other policies; copy its rules or list both in the route's allow")


def _providers(context: _Context, providers: list[tuple[int, dict[Any, Any]]],
               routes: list[tuple[int, dict[Any, Any]]]) -> Iterator[ConfigIssue]:
    names: dict[str, int | None] = {}
    for index, provider in providers:
        name, path = provider.get("name", "default"), ("identity_providers", index, "name")
        if not isinstance(name, str) or context.skip(path):
            continue
        if name in names:
            yield context.issue(path, f"duplicate identity provider name {name!r} (first at line {names[name]}); "
                                      "give each provider its own name")
        names[name] = context.line(path)
    for index, provider in providers:
        yield from _preset(context, index, provider)
    for index, route in routes:
        path = ("routes", index, "identity_provider")
        name = route.get("identity_provider")
        if name is None or not isinstance(name, str) or context.skip(path) or name in names:
            continue
        if not names:
            yield context.issue(path, f"identity provider {name!r} is named, but identity_providers is empty")
        else:
            close = difflib.get_close_matches(name, list(names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f": configured are {', '.join(map(repr, names))}"
            yield context.issue(path, f"unknown identity provider {name!r}{hint}")


def _token_issuers(context: _Context, issuers: list[tuple[int, dict[Any, Any]]],
                   providers: list[tuple[int, dict[Any, Any]]], routes: list[tuple[int, dict[Any, Any]]],
                   policies: dict[Any, Any], *, workloads: bool) -> Iterator[ConfigIssue]:
    taken = {provider.get("name", "default") for _, provider in providers}
    names: dict[str, int | None] = {}
    for index, issuer in issuers:
        name, path = issuer.get("name"), ("token_issuers", index, "name")
        if not isinstance(name, str) or context.skip(path):
            continue
        if name in names or name in taken:
            yield context.issue(path, f"token issuer name {name!r} is taken (by another token issuer or an "
                                      "identity provider); give each its own name")
        names[name] = context.line(path)
    for index, route in routes:
        listed = route.get("token_issuers")
        path = ("routes", index, "token_issuers")
        # With workload identity, a rule on `services` alone is met by a workload certificate.
        needing_tokens = ("clients", "scopes") if workloads else SERVICE_CRITERIA
        if not providers and not listed and not context.skip(("routes", index, "allow")) \
                and any(_names_services(rule, policies, needing_tokens) for rule in _list(route.get("allow"))):
            yield context.issue(("routes", index, "allow"),
                                f"route {route.get('name', index)!r} names services, but accepts access tokens from "
                                "no issuer: list token_issuers, or configure an identity provider")
        if not isinstance(listed, list) or not listed or context.skip(path):
            continue
        for position, name in enumerate(listed):
            if isinstance(name, str) and name not in names:
                close = difflib.get_close_matches(name, list(names), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else \
                    (f": configured are {', '.join(map(repr, names))}" if names else ": token_issuers is empty")
                yield context.issue((*path, position), f"unknown token issuer {name!r}{hint}")
        if not any(_names_services(rule, policies) for rule in _list(route.get("allow"))):
            yield context.issue(path, f"route {route.get('name', index)!r} lists token issuers, but no allow rule "
                                      "names a service (clients, scopes or services), so it accepts no bearer "
                                      "token: name the services, or remove token_issuers")


def _receivers(context: _Context, receivers: list[Any],
               routes: list[tuple[int, dict[Any, Any]]]) -> Iterator[ConfigIssue]:
    """Each signals receiver names an existing route (whose audience and sid its events carry)."""
    names = [str(route["name"]) for _, route in routes if isinstance(route.get("name"), str)]
    for index, receiver in enumerate(receivers):
        path = ("signals", "receivers", index, "route")
        route = receiver.get("route") if isinstance(receiver, dict) else None
        if isinstance(route, str) and route not in names and not context.skip(path):
            close = difflib.get_close_matches(route, names, n=1)
            yield context.issue(path, f"unknown route {route!r}" + (f" (did you mean {close[0]!r}?)" if close else
                                                                    ": name the route the receiving app is behind"))


def _names_services(rule: Any, policies: dict[Any, Any], criteria: tuple[str, ...] = SERVICE_CRITERIA) -> bool:
    """Whether ``rule`` (an allow entry) is about a calling service (names one of ``criteria``)."""
    if isinstance(rule, str) or (isinstance(rule, dict) and isinstance(rule.get("policy"), str)):
        named = _list(policies.get(rule if isinstance(rule, str) else rule["policy"]))
        return any(_names_services(entry, {}, criteria) for entry in named)  # policies don't nest
    return isinstance(rule, dict) and any(key in rule for key in criteria)


def _preset(context: _Context, index: int, provider: dict[Any, Any]) -> Iterator[ConfigIssue]:
    """The problems the provider's preset finds, and options sections for a preset not chosen."""
    base: YamlPath = ("identity_providers", index)
    name = provider.get("preset")
    chosen = None
    if isinstance(name, str) and not context.skip((*base, "preset")):
        try:
            chosen = resolve_preset(name)
        except ValueError:
            return  # reported by the schema
    for key, preset in option_sections().items():
        if key in provider and (chosen is None or chosen.options != key) and not context.skip((*base, key)):
            yield context.issue((*base, key), f"{key} holds the options of preset {preset}, but the provider's "
                                              f"preset is {name if isinstance(name, str) else 'none'}: "
                                              f"set preset: {preset}, or remove {key}")
    if chosen is None:
        return
    for key, message in chosen.check(with_defaults(chosen, provider), provider):
        path = (*base, *key.split("."))
        if not context.skip(path):
            yield context.issue(path, message)


def _needs_user(rule: Any, policies: dict[Any, Any]) -> bool:
    """Whether ``rule`` (an allow entry) can only hold for a signed-in user."""
    if isinstance(rule, str) or (isinstance(rule, dict) and isinstance(rule.get("policy"), str)):
        named = _list(policies.get(rule if isinstance(rule, str) else rule["policy"]))
        return bool(named) and all(_needs_user(entry, {}) for entry in named)  # policies don't nest
    if not isinstance(rule, dict):
        return False
    device = rule.get("device")
    return any(key in rule for key in IDENTITY_CRITERIA if key != "device") or \
        (isinstance(device, dict) and device.get("owner_is_user") is True)


def _sign_in_without_provider(context: _Context, routes: list[tuple[int, dict[Any, Any]]],
                              policies: dict[Any, Any]) -> Iterator[ConfigIssue]:
    """A route only signed-in users could pass, and no way to sign in: it would refuse everyone."""
    for index, route in routes:
        path = ("routes", index, "allow")
        allow = _list(route.get("allow"))
        if allow and not context.skip(path) and all(_needs_user(rule, policies) for rule in allow):
            yield context.issue(path, f"route {route.get('name', index)!r} admits only signed-in users, but no "
                                      "identity provider is configured, so it would refuse everyone: add one "
                                      "under identity_providers, or allow without sign-in (e.g. source_cidrs)")


def _needs_sign_in(route: dict[Any, Any]) -> bool:
    allow = _list(route.get("allow"))
    return not all(isinstance(rule, dict) and rule.get("public") is True for rule in allow)


def _cookie_reach(context: _Context, data: dict[Any, Any], routes: list[tuple[int, dict[Any, Any]]]
                  ) -> Iterator[ConfigIssue]:
    """Sign-in completes on the public URL's host; the session cookie set there must reach each route."""
    server: dict[Any, Any] = data["server"] if isinstance(data.get("server"), dict) else {}
    sessions: dict[Any, Any] = data["sessions"] if isinstance(data.get("sessions"), dict) else {}
    try:
        public = server.get("public_url")
        public_host = URL(public).host if isinstance(public, str) else split_listen(
            str(server.get("listen", "127.0.0.1:8080")))[0]
    except ValueError:
        return  # reported by the schema
    public_host = (public_host or "").lower().rstrip(".")
    domain = sessions.get("cookie_domain")
    domain = domain.strip().lower().strip(".") if isinstance(domain, str) else None
    if context.skip(("sessions", "cookie_domain")) or context.skip(("server", "public_url")):
        return

    def under(host: str) -> bool:
        return domain is not None and (host == domain or host.endswith("." + domain))

    if domain is not None and not under(public_host):
        yield context.issue(("sessions", "cookie_domain"),
                            f"the public URL's host {public_host!r} is not under cookie_domain {domain!r}: "
                            "browsers would refuse the session cookie set at the sign-in callback")
        return
    for index, route in routes:
        host, path = route.get("host"), ("routes", index, "host")
        if not isinstance(host, str) or context.skip(path) or not _needs_sign_in(route):
            continue
        bare = host.strip().lower().rstrip(".").removeprefix("*.")
        if bare != public_host and not under(bare):
            yield context.issue(path, f"host {host!r} needs sign-in, but the session cookie is set on "
                                      f"{public_host!r} (the public URL's host): set sessions.cookie_domain to a "
                                      f"domain both are under, or serve this route on {public_host!r}")


def _grpc_without_http2(context: _Context, routes: list[tuple[int, dict[Any, Any]]], server: Any
                        ) -> Iterator[ConfigIssue]:
    """gRPC runs over HTTP/2 only: TLS with http2.enabled, or a plain listener with http2.cleartext."""
    server = server if isinstance(server, dict) else {}
    http2 = server.get("http2") if isinstance(server.get("http2"), dict) else {}
    if (isinstance(server.get("tls"), dict) and http2.get("enabled", True) is not False) \
            or http2.get("cleartext") is True:
        return
    for index, route in routes:
        path = ("routes", index, "upstream_protocol")
        if route.get("upstream_protocol") == "grpc" and not context.skip(path):
            yield context.issue(path, "gRPC clients need HTTP/2, which this listener does not offer: configure "
                                      "server.tls (with server.http2.enabled), or server.http2.cleartext: true")


def _workload_identity(context: _Context, workloads: dict[Any, Any], server: Any) -> Iterator[ConfigIssue]:
    """Workload certificates come over the listener's TLS, from the trust bundle files."""
    tls = server.get("tls") if isinstance(server, dict) else None
    if not isinstance(tls, dict) and not context.skip(("workload_identity",)):
        yield context.issue(("workload_identity",), "workload certificates come over mutual TLS: configure "
                                                    "server.tls (cert_file and key_file) on the listener")
    domains = workloads.get("trust_domains")
    if not isinstance(domains, dict):
        return
    for name, domain in domains.items():
        path = ("workload_identity", "trust_domains", name, "bundle_file")
        filename = domain.get("bundle_file") if isinstance(domain, dict) else None
        if not isinstance(filename, str) or not filename or context.skip(path):
            continue
        problem = _unreadable(filename)
        if problem is None:
            try:
                with open(filename, "rb") as file:
                    x509.load_pem_x509_certificates(file.read())
            except OSError as exc:
                problem = str(exc.strerror or exc).lower()
            except ValueError:
                problem = "it holds no PEM certificate (-----BEGIN CERTIFICATE-----), or a broken one"
        if problem is not None:
            yield context.issue(path, f"cannot read the trust bundle of {name!r} from {filename!r}: {problem}")


def _tls_files(context: _Context, tls: dict[Any, Any]) -> Iterator[ConfigIssue]:
    for key, what in _TLS_FILES.items():
        path = ("server", "tls", key)
        filename = tls.get(key)
        if not isinstance(filename, str) or not filename or context.skip(path):
            continue
        problem = _unreadable(filename)
        if problem is not None:
            yield context.issue(path, f"cannot read {what} {filename!r}: {problem}")


def _unreadable(filename: str) -> str | None:
    """Why ``filename`` cannot be read as a regular file, or None when it can."""
    # stat rather than open: opening a FIFO for reading would block.
    try:
        mode = os.stat(filename).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return str(exc.strerror or exc).lower()
    except ValueError:  # a NUL byte in the name
        return "invalid file name"
    if stat.S_ISDIR(mode):
        return "it is a directory"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    if not os.access(filename, os.R_OK):
        return "permission denied"
    return None
