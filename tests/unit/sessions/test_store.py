"""Choosing a store from the config: names, URLs, import strings, and clear errors for the rest."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from ztproxy.config.sessions import SessionsConfig, check_store, redact_url, resolve_store
from ztproxy.sessions.memory import MemoryStore
from ztproxy.sessions.redis import DEFAULT_SENTINEL_PORT, RedisStore, SentinelTarget, parse_sentinel_url
from ztproxy.sessions.store import open_store


class CustomStore(MemoryStore):
    """A store named by an import string: built with the SessionsConfig."""

    def __init__(self, config: SessionsConfig) -> None:
        super().__init__(config)
        self.config = config


class Incomplete:
    def __init__(self, config: SessionsConfig) -> None:
        self.config = config

    async def get(self, key: str) -> bytes | None:
        return None

    async def put(self, key: str, value: bytes, ttl: float, *, only_new: bool = False,
                  only_existing: bool = False, indexes: Sequence[str] = ()) -> bool:
        return False


NOT_A_FACTORY = 42


def test_memory_is_the_default() -> None:
    assert isinstance(open_store(SessionsConfig()), MemoryStore)


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0", "REDIS://127.0.0.1", "rediss://cache.corp.example:6380/2",
    "unix:///run/redis/redis.sock?db=1", "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0",
    "redis://:p%40ss@127.0.0.1:6379/0",
])
async def test_redis_urls_open_a_redis_store_without_connecting(url: str) -> None:
    check_store(url)
    store = open_store(SessionsConfig(store=url))
    assert isinstance(store, RedisStore)
    await store.close()


def test_an_import_string_builds_the_class_with_the_config() -> None:
    config = SessionsConfig(store="tests.unit.sessions.test_store:CustomStore", store_timeout=3)
    check_store(config.store)
    store = open_store(config)
    assert isinstance(store, CustomStore)
    assert store.config is config


@pytest.mark.parametrize(("spec", "message"), [
    ("mongodb://127.0.0.1", "unknown session store scheme 'mongodb://'"),
    ("memcached", "invalid session store 'memcached'"),
    ("redis", "invalid session store 'redis'"),
    ("", "invalid session store"),
    ("no_such_package.module:Store", "cannot import 'no_such_package.module': ModuleNotFoundError"),
    ("tests.unit.sessions.test_store:Missing", "has no 'Missing'"),
    ("tests.unit.sessions.test_store:NOT_A_FACTORY", "is not a class or factory"),
    ("redis://127.0.0.1:notaport/0", "the port must be a number"),
    ("redis://127.0.0.1:99999/0", "the port must be a number"),
    ("redis:///0", "a host is required"),
    ("redis://127.0.0.1/zero", "the path must be a database number"),
    ("redis://127.0.0.1/0?socket_timeout=soon", "socket_timeout"),
    ("redis://[::1/0", "Invalid IPv6 URL"),
    ("unix://", "a socket path is required"),
    ("redis+sentinel://127.0.0.1:26379", "the master name is required"),
    ("redis+sentinel://127.0.0.1:26379/", "the master name is required"),
    ("redis+sentinel:///mymaster", "bad sentinel address ''"),
    ("redis+sentinel://127.0.0.1:26379,/mymaster", "bad sentinel address ''"),
    ("redis+sentinel://127.0.0.1:port/mymaster", "bad sentinel port"),
    ("redis+sentinel://127.0.0.1:0/mymaster", "bad sentinel port"),
    ("redis+sentinel://[::1/mymaster", "bad sentinel address"),
    ("redis+sentinel://127.0.0.1/mymaster/db", "/master_name or /master_name/db"),
    ("redis+sentinel://127.0.0.1/mymaster/0/1", "/master_name or /master_name/db"),
    ("redis+sentinel://127.0.0.1/mymaster?socket_timeout=1", "unknown option 'socket_timeout'"),
])
def test_unusable_specs_are_refused_with_a_clear_message(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_store(spec)
    with pytest.raises(ValueError, match=re.escape(message)):
        open_store(SessionsConfig(store=spec))


def test_a_class_that_is_not_a_store_is_refused_when_opened() -> None:
    with pytest.raises(ValueError, match="did not build a session store"):
        open_store(SessionsConfig(store="tests.unit.sessions.test_store:Incomplete"))


@pytest.mark.parametrize("spec", [
    "redis://:hunter2-secret@127.0.0.1:bad/0",
    "redis://admin:hunter2-secret@127.0.0.1/x",
    "redis+sentinel://:hunter2-secret@127.0.0.1:26379",
    "redis+sentinel://127.0.0.1:26379/m?sentinel_password=hunter2-secret&x=1",
    "redis://:hunter2/secret@127.0.0.1:bad/0",
    "user:hunter2-secret@host",
])
def test_error_messages_never_show_the_password(spec: str) -> None:
    with pytest.raises(ValueError) as raised:
        check_store(spec)
    assert "hunter2" not in str(raised.value)


def test_redact_url() -> None:
    assert redact_url("redis://user:pw@host:1/0") == "redis://***@host:1/0"
    assert redact_url("redis://host:1/0") == "redis://host:1/0"
    assert redact_url("r+s://h/m?sentinel_password=pw&db=1") == "r+s://h/m?sentinel_password=***&db=1"


def test_store_timeout_must_be_positive_for_redis() -> None:
    with pytest.raises(ValueError, match="store_timeout"):
        open_store(SessionsConfig(store="redis://127.0.0.1", store_timeout=0))


def test_sentinel_url_is_read_in_full() -> None:
    target = parse_sentinel_url(
        "redis+sentinel://app:s%3Ecret@10.0.0.1:26380,sentinel.corp.example,[::1]:26381/cache/3"
        "?sentinel_password=watch%26er&sentinel_username=watcher")
    assert target == SentinelTarget(
        sentinels=(("10.0.0.1", 26380), ("sentinel.corp.example", DEFAULT_SENTINEL_PORT), ("::1", 26381)),
        master_name="cache", db=3, username="app", password="s>cret",
        sentinel_username="watcher", sentinel_password="watch&er")


def test_sentinel_url_defaults() -> None:
    assert parse_sentinel_url("redis+sentinel://127.0.0.1/mymaster") == SentinelTarget(
        sentinels=(("127.0.0.1", DEFAULT_SENTINEL_PORT),), master_name="mymaster")


def test_resolve_store_maps_names_to_classes() -> None:
    assert resolve_store("memory") is MemoryStore
    for url in ("redis://h", "rediss://h", "unix:///s", "redis+sentinel://h/m"):
        assert resolve_store(url) is RedisStore
