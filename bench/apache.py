"""Apache httpd with mod_auth_openidc in front of the bench upstream: config and launch.

The comparison target of ``run_auth.py``: Debian's ``apache2`` (mpm_event, the stock
process and thread counts) with ``libapache2-mod-auth-openidc``, sessions kept server-side
in Redis, claims passed upstream as headers, ``mod_proxy_http`` forwarding. Everything
lives in a ServerRoot of its own inside the bench's temp dir: our own config file, pid
file, logs and runtime dir; nothing of the system's ``/etc/apache2`` is read. Apache runs
in the foreground (``-DFOREGROUND``) as a normal parent + children tree, and is stopped by
its PID (and process group) like every other bench process.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from processes import ManagedProcess, TargetFailed, wait_until_ok

APACHE = shutil.which("apache2") or "/usr/sbin/apache2"
MODULES_DIR = Path("/usr/lib/apache2/modules")
# mod_log_config and mod_unixd are compiled into Debian's apache2; these are loaded.
MODULES = {
    "mpm_event_module": "mod_mpm_event.so",
    "authn_core_module": "mod_authn_core.so",
    "authz_core_module": "mod_authz_core.so",
    "authz_user_module": "mod_authz_user.so",
    "proxy_module": "mod_proxy.so",
    "proxy_http_module": "mod_proxy_http.so",
    "auth_openidc_module": "mod_auth_openidc.so",
}
INSTALL_HINT = ("apt-get install -y --no-install-recommends libapache2-mod-auth-openidc "
                "(it brings apache2-bin; no apache2 service is installed or started)")
READY_TIMEOUT = 15.0
REDIRECT_PATH = "/redirect_uri"
PUBLIC_PATH = "/public"
# Header names are "OIDC-Claim-<claim>": hyphens, so that upstreams that drop header names
# with underscores (nginx's default) still see them.
CLAIM_PREFIX = "OIDC-Claim-"
SESSION_COOKIE = "mod_auth_openidc_session"


class ApacheMissing(TargetFailed):
    """apache2 or mod_auth_openidc is not installed."""


@dataclass(frozen=True)
class ApacheOidc:
    """What the Apache target needs to know: where it listens, the IdP, Redis, the upstream."""

    port: int
    issuer: str
    client_id: str
    client_secret: str
    redis_port: int
    upstream_url: str
    email_domain: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def redirect_uri(self) -> str:
        return self.url + REDIRECT_PATH


def check_installed() -> None:
    """Raise :class:`ApacheMissing`, saying how to install, unless Apache and the modules are here."""
    if not os.access(APACHE, os.X_OK):
        raise ApacheMissing(f"apache2 not found ({APACHE}): {INSTALL_HINT}")
    missing = [name for name in MODULES.values() if not (MODULES_DIR / name).is_file()]
    if missing:
        raise ApacheMissing(f"Apache modules missing in {MODULES_DIR}: {', '.join(missing)}: {INSTALL_HINT}")


def apache_config(target: ApacheOidc, root: Path, *, access_log: Path) -> str:
    load = "\n".join(f"LoadModule {name} {MODULES_DIR / so}" for name, so in MODULES.items())
    # Apache refuses to serve as root: its children switch to www-data, as on a Debian install.
    user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
    upstream = target.upstream_url.rstrip("/")
    domain = target.email_domain.replace(".", r"\.")
    return f"""\
ServerRoot "{root}"
ServerName 127.0.0.1
Listen 127.0.0.1:{target.port}
PidFile "{root / 'apache2.pid'}"
DefaultRuntimeDir "{root / 'run'}"
ErrorLog "{root / 'error.log'}"
LogLevel warn
{load}
{user}
# mpm_event sized so that Apache never runs short of threads under wrk's 64 connections:
# 3 children of 64 threads, all started at once and none stopped as idle. (Debian's stock
# 2 x 25 threads, growing on demand, closes keep-alive connections whenever a child's
# threads are all busy or a child is stopped, which wrk counts as read errors; this
# sizing is the better of the two for Apache here.)
StartServers 3
ServerLimit 3
ThreadLimit 64
ThreadsPerChild 64
MinSpareThreads 64
MaxSpareThreads 192
MaxRequestWorkers 192
MaxConnectionsPerChild 0
# Connections are never closed by request count, as for the other targets.
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 75
# An access log, like ztproxy's (the combined format, to a file).
LogFormat "%h %l %u %t \\"%r\\" %>s %b \\"%{{Referer}}i\\" \\"%{{User-Agent}}i\\"" combined
CustomLog "{access_log}" combined

OIDCProviderMetadataURL {target.issuer}/.well-known/openid-configuration
OIDCClientID {target.client_id}
OIDCClientSecret {target.client_secret}
OIDCRedirectURI {target.redirect_uri}
OIDCCryptoPassphrase {secrets.token_hex(32)}
OIDCScope "openid email profile groups"
OIDCPKCEMethod S256
OIDCSessionType server-cache
OIDCCacheType redis
OIDCRedisCacheServer 127.0.0.1:{target.redis_port}
OIDCPassClaimsAs headers
OIDCClaimPrefix {CLAIM_PREFIX}
OIDCRemoteUserClaim email
# ztproxy's default sessions.idle_timeout (mod_auth_openidc's default is 5 minutes).
OIDCSessionInactivityTimeout 3600

ProxyRequests Off
ProxyPass {REDIRECT_PATH} !
ProxyPass / {upstream}/
<Location />
    AuthType openid-connect
    # The same policy as ztproxy's route: a signed-in user of the email domain.
    Require claim "email~^[^@]+@{domain}$"
</Location>
<Location {PUBLIC_PATH}>
    AuthType None
    Require all granted
</Location>
"""


def start_apache(target: ApacheOidc, workdir: Path) -> ManagedProcess:
    """Write the config, run ``apache2 -DFOREGROUND`` and wait until the public path answers 200."""
    check_installed()
    root = workdir / "apache"
    (root / "run").mkdir(parents=True, exist_ok=True)
    config = root / "apache2.conf"
    config.write_text(apache_config(target, root, access_log=workdir / "apache-access.log"), encoding="utf-8")
    argv = [APACHE, "-d", str(root), "-f", str(config), "-DFOREGROUND"]
    process = ManagedProcess.spawn("apache", argv, workdir)
    try:
        wait_until_ok(f"{target.url}{PUBLIC_PATH}/", [process], READY_TIMEOUT)
    except TargetFailed as exc:
        process.stop()
        raise TargetFailed(f"{exc}\n    error.log: {tail(root / 'error.log')}") from None
    except BaseException:  # Ctrl-C: never leave it running
        process.stop()
        raise
    return process


def tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(none)"
