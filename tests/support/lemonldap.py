"""A real LemonLDAP::NG 2.16 OpenID Provider: Debian's packages, its FastCGI server behind nginx with TLS.

``start_lemonldap(relying_party=...)`` writes everything one provider needs into a directory of
its own (made with ``tempfile``: when the tests run as root, the FastCGI server, which refuses
root, runs as ``nobody`` and must reach it), then starts two processes, stopped by PID:

- ``llng-fastcgi-server`` (the portal, with the OpenID Connect issuer), pointed at the
  ``lemonldap-ng.ini`` written here through ``LLNG_DEFAULTCONFFILE``; the ini names the File
  configuration backend and its directory, where ``lmConf-1.json`` is the whole configuration;
- ``nginx`` with a certificate from a CA made here (``ca_file``), on a free loopback port.

Users are rows of a SQLite database (LemonLDAP's DBI authentication and user backends): a
test changes a user's groups with ``set_groups``, and the next refresh at the provider reads
them (offline refresh tokens re-read the user; the ones tied to the portal session would
not). ztproxy is registered as one relying party (``relying_party``: its public URL) with
``client_secret_post``, offline access, PKCE, and front-channel logout with session required.

Nothing is skipped: without the Debian packages the fixture fails and says what to install.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import sqlite3
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import free_port
from tests.support.posture import CertificateAuthority, Issued

FASTCGI_SERVER = Path("/usr/sbin/llng-fastcgi-server")
NGINX = Path("/usr/sbin/nginx")
PORTAL_HTDOCS = Path("/usr/share/lemonldap-ng/portal/htdocs")
PORTAL_TEMPLATES = Path("/usr/share/lemonldap-ng/portal/templates")
INSTALL_HINT = ("the LemonLDAP::NG tests need Debian's lemonldap-ng-fastcgi-server, liblemonldap-ng-portal-perl, "
                "libdbd-sqlite3-perl and nginx (`./dev test` installs them)")
START_TIMEOUT = 30.0  # the first request compiles the portal: a few seconds on a busy machine

CLIENT_ID = "ztproxy"
# Sent with client_secret_post: LemonLDAP does not form-decode client_secret_basic credentials
# (RFC 6749 2.3.1), so a secret with characters that need encoding would fail there.
CLIENT_SECRET = "lemonldap-client-secret-for-tests"
# ztproxy asks for offline_access: LemonLDAP's offline refresh re-reads the user from the
# user backend, so a group changed there reaches the next refresh.
SCOPES = ("openid", "email", "profile", "groups", "offline_access")


@dataclass(frozen=True)
class User:
    uid: str
    password: str
    mail: str
    name: str
    groups: tuple[str, ...]


ALICE = User("alice", "alice-lemonldap-password", "alice@corp.example", "Alice Example", ("employees",))
BOB = User("bob", "bob-lemonldap-password", "bob@corp.example", "Bob Example", ("employees", "payroll"))
USERS = (ALICE, BOB)
GROUP_SEPARATOR = "; "  # LemonLDAP's multiValuesSeparator: one column holds every group


@dataclass
class LemonLdap:
    """One LemonLDAP::NG portal and issuer on ``https://127.0.0.1:{port}``."""

    directory: Path
    port: int
    ca: CertificateAuthority
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # nginx's, from ``ca``: for 127.0.0.1 and localhost, so a relying party's server may use it too.
    certificate: Issued | None = None

    @property
    def issuer(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.ca.cert_file

    @property
    def users_db(self) -> Path:
        return self.directory / "users.sqlite"

    @property
    def logout_url(self) -> str:
        return self.issuer + "/?logout=1"

    def set_groups(self, uid: str, groups: Sequence[str]) -> None:
        """Change a user's groups in the user backend, as an administrator would."""
        with sqlite3.connect(self.users_db) as db:
            changed = db.execute("UPDATE users SET member_of = ? WHERE uid = ?", (GROUP_SEPARATOR.join(groups), uid))
            assert changed.rowcount == 1, uid

    def log_tail(self, lines: int = 40) -> str:
        tails = []
        for name in ("llng.log", "nginx-error.log"):
            path = self.directory / name
            if path.exists():
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
                tails.append(f"--- {name}\n" + "\n".join(text))
        return "\n".join(tails)

    def start(self, relying_party: str) -> None:
        run_as = _unprivileged_user()
        self._write_users()
        self._write_configuration(relying_party)
        self._write_nginx(run_as)
        if run_as is not None:  # the FastCGI server and nginx's workers read and write here as that user
            for path in (self.directory, *self.directory.rglob("*")):
                os.chown(path, run_as.pw_uid, run_as.pw_gid)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "LLNG_DEFAULTCONFFILE": str(self.directory / "lemonldap-ng.ini"),
               "LLNG_DEFAULTLOGGER": "Lemonldap::NG::Common::Logger::Std"}
        user = ["--user", run_as.pw_name, "--group", _group_name(run_as.pw_gid)] if run_as is not None else []
        self._spawn([str(FASTCGI_SERVER), "--foreground", "--proc", "2", "--socket", str(self._socket),
                     "--pid", str(self.directory / "llng.pid"), *user], env, "llng.log")
        self._spawn([str(NGINX), "-p", str(self.directory), "-c", str(self.directory / "nginx.conf"),
                     "-e", str(self.directory / "nginx-error.log")], env, "nginx.log")
        self._wait_ready()

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                # nginx: SIGQUIT is its graceful stop; the FastCGI server's process manager stops its
                # workers on SIGTERM.
                process.send_signal(signal.SIGQUIT if Path(str(process.args[0])) == NGINX else signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()

    @property
    def _socket(self) -> Path:
        return self.directory / "llng.sock"

    def _spawn(self, command: list[str], env: dict[str, str], log_name: str) -> None:
        with open(self.directory / log_name, "ab") as log:
            self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                   cwd=self.directory, start_new_session=True))

    def _wait_ready(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        url = self.issuer + "/.well-known/openid-configuration"
        deadline = time.monotonic() + START_TIMEOUT
        last_error = ""
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited with {process.returncode}\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, context=context, timeout=5) as response:
                    if json.loads(response.read()).get("issuer") == self.issuer:
                        return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last_error = str(exc)
            time.sleep(0.1)
        raise RuntimeError(f"LemonLDAP::NG did not answer at {url} in time ({last_error})\n{self.log_tail()}")

    def _write_users(self) -> None:
        # Plain-text passwords (dbiAuthPasswordHash empty): a test database, nothing else.
        with sqlite3.connect(self.users_db) as db:
            db.execute("CREATE TABLE users (uid TEXT PRIMARY KEY, password TEXT, mail TEXT, cn TEXT, member_of TEXT)")
            db.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                           [(u.uid, u.password, u.mail, u.name, GROUP_SEPARATOR.join(u.groups)) for u in USERS])

    def _write_configuration(self, relying_party: str) -> None:
        conf_dir = self.directory / "conf"
        sessions = self.directory / "sessions"
        for path in (conf_dir, sessions / "lock", self.directory / "psessions" / "lock", self.directory / "cache"):
            path.mkdir(parents=True)
        (self.directory / "lemonldap-ng.ini").write_text(f"""\
[all]
logLevel = notice
logger = Lemonldap::NG::Common::Logger::Std
userLogger = Lemonldap::NG::Common::Logger::Std
checkTime = 1

[configuration]
type = File
dirName = {conf_dir}

[portal]
staticPrefix = /static
templateDir = {PORTAL_TEMPLATES}
languages = en

[handler]
status = 0
""", encoding="utf-8")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
        public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        file_storage = {"Directory": str(sessions), "LockDirectory": str(sessions / "lock"),
                        "generateModule": "Lemonldap::NG::Common::Apache::Session::Generate::SHA256"}
        conf: dict[str, Any] = {
            "cfgNum": 1, "cfgVersion": "2.16.1", "cfgAuthor": "ztproxy tests", "cfgDate": str(int(time.time())),
            "portal": self.issuer + "/",
            "domain": "127.0.0.1",
            "securedCookie": 1,
            "cookieName": "lemonldap",
            "whatToTrace": "uid",
            "locationRules": {"127.0.0.1": {"default": "accept"}},
            "globalStorage": "Apache::Session::File",
            "globalStorageOptions": file_storage,
            "persistentStorage": "Apache::Session::File",
            "persistentStorageOptions": {"Directory": str(self.directory / "psessions"),
                                         "LockDirectory": str(self.directory / "psessions" / "lock")},
            "localSessionStorage": "Cache::FileCache",
            "localSessionStorageOptions": {"namespace": "lemonldap-ng-sessions", "default_expires_in": 600,
                                           "directory_umask": "007", "cache_depth": 3,
                                           "cache_root": str(self.directory / "cache")},
            "notification": 0,
            "loginHistoryEnabled": 0,
            # Users, passwords and attributes: the SQLite database.
            "authentication": "DBI", "userDB": "Same", "passwordDB": "Null",
            "dbiAuthChain": f"dbi:SQLite:dbname={self.users_db}", "dbiAuthUser": "", "dbiAuthPassword": "",
            "dbiAuthTable": "users", "dbiAuthLoginCol": "uid", "dbiAuthPasswordCol": "password",
            "dbiAuthPasswordHash": "", "dbiUserTable": "users",
            "dbiExportedVars": {"uid": "uid", "mail": "mail", "cn": "cn", "memberOf": "member_of"},
            "multiValuesSeparator": GROUP_SEPARATOR,
            # The OpenID Connect issuer.
            "issuerDBOpenIDConnectActivation": 1,
            "oidcServiceMetaDataIssuer": self.issuer,
            "oidcServicePrivateKeySig": private_pem,
            "oidcServicePublicKeySig": public_pem,
            "oidcServiceKeyIdSig": "lemonldap-test-1",
            "oidcServiceAllowAuthorizationCodeFlow": 1,
            "oidcRPMetaDataOptions": {"ztproxy": {
                "oidcRPMetaDataOptionsClientID": CLIENT_ID,
                "oidcRPMetaDataOptionsClientSecret": CLIENT_SECRET,
                "oidcRPMetaDataOptionsRedirectUris": f"{relying_party}/.ztproxy/callback",
                "oidcRPMetaDataOptionsPostLogoutRedirectUris": f"{relying_party}/.ztproxy/signed-out",
                "oidcRPMetaDataOptionsIDTokenSignAlg": "RS256",
                "oidcRPMetaDataOptionsRequirePKCE": 1,
                "oidcRPMetaDataOptionsBypassConsent": 1,
                "oidcRPMetaDataOptionsAllowOffline": 1,
                "oidcRPMetaDataOptionsIDTokenForceClaims": 1,
                # OIDC Front-Channel Logout 1.0: LemonLDAP's logout page frames this URL with iss and sid.
                "oidcRPMetaDataOptionsLogoutUrl": f"{relying_party}/.ztproxy/frontchannel-logout",
                "oidcRPMetaDataOptionsLogoutType": "front",
                "oidcRPMetaDataOptionsLogoutSessionRequired": 1,
                "oidcRPMetaDataOptionsLogoutBypassConfirm": 1,
            }},
            "oidcRPMetaDataExportedVars": {"ztproxy": {
                "email": "mail", "name": "cn", "preferred_username": "uid",
                "groups": "memberOf;string;always",
                # LemonLDAP 2.16 names the user (its sub) as the front-channel logout's sid and puts no
                # sid in its ID tokens: this claim gives ztproxy's sessions the sid its logout will name.
                "sid": "uid",
            }},
            "oidcRPMetaDataOptionsExtraClaims": {"ztproxy": {"groups": "groups sid"}},
        }
        (conf_dir / "lmConf-1.json").write_text(json.dumps(conf, indent=1), encoding="utf-8")

    def _write_nginx(self, run_as: pwd.struct_passwd | None) -> None:
        server = self.certificate = self.ca.issue(common_name="127.0.0.1", ips=["127.0.0.1"], dns_names=["localhost"],
                                                  server=True)
        temp = self.directory / "nginx-temp"
        temp.mkdir()
        user = f"user {run_as.pw_name} {_group_name(run_as.pw_gid)};" if run_as is not None else ""
        temp_paths = "\n".join(f"  {kind}_temp_path {temp / kind};" for kind in
                               ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.directory / "nginx.conf").write_text(f"""\
{user}
daemon off;
worker_processes 1;
pid {self.directory / "nginx.pid"};
error_log {self.directory / "nginx-error.log"} warn;
events {{ worker_connections 128; }}
http {{
  include /etc/nginx/mime.types;
  access_log {self.directory / "nginx-access.log"};
{temp_paths}
  server {{
    listen 127.0.0.1:{self.port} ssl;
    ssl_certificate {server.cert_file};
    ssl_certificate_key {server.key_file};
    root {PORTAL_HTDOCS};
    # Everything but the static files is the portal's PSGI application.
    location /static/ {{ alias {PORTAL_HTDOCS}/static/; }}
    location /javascript/ {{ alias /usr/share/javascript/; }}
    location / {{
      include /etc/nginx/fastcgi_params;
      fastcgi_pass unix:{self._socket};
      fastcgi_param LLTYPE psgi;
      fastcgi_param SCRIPT_FILENAME {PORTAL_HTDOCS}/index.psgi;
      fastcgi_param SCRIPT_NAME "";
      fastcgi_param PATH_INFO $uri;
      fastcgi_param HTTPS on;
    }}
  }}
}}
""", encoding="utf-8")


def _unprivileged_user() -> pwd.struct_passwd | None:
    """Who the servers run as: ``nobody`` when the tests run as root (LemonLDAP refuses root), else the caller."""
    return pwd.getpwnam("nobody") if os.geteuid() == 0 else None


def _group_name(gid: int) -> str:
    return grp.getgrgid(gid).gr_name


def start_lemonldap(relying_party: str) -> LemonLdap:
    """A started LemonLDAP::NG with ztproxy (at ``relying_party``) registered; ``stop()`` it when done."""
    missing = [str(path) for path in (FASTCGI_SERVER, NGINX, PORTAL_HTDOCS / "index.psgi") if not path.exists()]
    if missing:
        pytest.fail(f"{INSTALL_HINT}; missing: {', '.join(missing)}")
    directory = Path(tempfile.mkdtemp(prefix="ztproxy-lemonldap-"))
    ca = CertificateAuthority("LemonLDAP test CA", directory)
    idp = LemonLdap(directory=directory, port=free_port(), ca=ca)
    try:
        idp.start(relying_party)
    except BaseException:
        idp.stop()
        raise
    return idp


def remove(idp: LemonLdap, *, keep: bool) -> None:
    """Stop it; its directory goes too, unless ``keep`` (a failed module, to read its logs)."""
    idp.stop()
    if keep:
        print(f"LemonLDAP::NG files kept in {idp.directory}")
    else:
        shutil.rmtree(idp.directory, ignore_errors=True)
