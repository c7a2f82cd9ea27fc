"""Secrets a configuration leaves out: the cookie secret and the assertion key directory.

``generate_cookie_secret`` makes (and logs) the cookie secret of a configuration that has
none, for a run or an app built directly. ``GeneratedSecrets`` holds those of one run of
``ztproxy run``, filled into its first configuration and every reload after it.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import structlog

from ztproxy.assertion.keys import KeyRing
from ztproxy.config.schema import Config

# structlog itself, not ztproxy.telemetry (which imports the stages): authenticate imports this module.
log = structlog.get_logger("ztproxy.run_secrets")


def generate_cookie_secret() -> str:
    """A random cookie secret for a configuration without ``sessions.cookie_secrets``; logged."""
    log.warning("cookie_secret_generated", hint="set sessions.cookie_secrets (or cookie_secrets_file) "
                                                 "so sign-ins in progress survive a restart")
    return secrets.token_hex(32)


@dataclass
class GeneratedSecrets:
    """Secrets the config leaves out, made once per run so every worker and reload shares them.

    Without ``sessions.cookie_secrets`` a random one is made; without assertion keys, a
    key directory for this run is made with one key in it. Both last as long as this
    process: a restart drops sign-ins in progress and changes the assertion key, which
    the warnings say, pointing at the settings that make them persistent.
    """

    cookie_secret: str | None = None
    keys_dir: str | None = None

    def fill(self, config: Config) -> Config:
        """``config`` with the generated secrets where it has none; raises ConfigError for unusable keys."""
        if config.identity_providers and not config.sessions.cookie_secrets:
            if self.cookie_secret is None:
                self.cookie_secret = generate_cookie_secret()
            sessions = config.sessions.model_copy(update={"cookie_secrets": (self.cookie_secret,)})
            config = config.model_copy(update={"sessions": sessions})
        assertion = config.assertion
        if assertion.keys_dir is None and not assertion.key_files:
            if self.keys_dir is None:
                self.keys_dir = tempfile.mkdtemp(prefix="ztproxy-keys-")
                log.warning("assertion_key_ephemeral", keys_dir=self.keys_dir,
                            hint="set assertion.keys_dir (see `ztproxy keys generate`) so apps can keep "
                                 "verifying assertions across restarts")
            assertion = assertion.model_copy(update={"keys_dir": self.keys_dir})
            config = config.model_copy(update={"assertion": assertion})
        # Before any worker starts (or reloads): writes the first key of an empty directory, and
        # refuses unusable key files with a ConfigError instead of workers crashing in a loop.
        KeyRing.from_config(config.assertion, now=time.time())
        return config


@contextlib.contextmanager
def shared_secrets() -> Iterator[GeneratedSecrets]:
    """The run's generated secrets; the temporary key directory goes when the run ends."""
    generated = GeneratedSecrets()
    try:
        yield generated
    finally:
        if generated.keys_dir is not None:
            shutil.rmtree(generated.keys_dir, ignore_errors=True)
