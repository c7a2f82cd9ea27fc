"""requirements.lock and requirements-image.lock, checked against pyproject.toml and the running virtualenv.

`./dev lock` resolves requirements.lock with uv (universal: Python 3.11 and newer, every platform;
exact versions with the hashes of PyPI's files) and writes into its header the pyproject.toml lines
it was made from; ./dev installs it. requirements-image.lock, for the Dockerfile, is the
dependencies alone at the same versions. These tests fail when pyproject.toml's requirements change
without `./dev lock`, when a lock misses or contradicts a requirement, when the two locks disagree,
and when the virtualenv they run in was not installed from requirements.lock.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"
IMAGE_LOCK = REPO / "requirements-image.lock"
PYTHONS = ("3.11.0", "3.12.0", "3.13.0")
PLATFORMS = {"linux": ("Linux", "posix"), "darwin": ("Darwin", "posix"), "win32": ("Windows", "nt")}
RELOCK = "pyproject.toml's requirements changed since requirements.lock was made: run ./dev lock"


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]

    def applies(self, environment: dict[str, str]) -> bool:
        return self.marker is None or self.marker.evaluate(environment)


def project() -> dict[str, Any]:
    with open(REPO / "pyproject.toml", "rb") as file:
        table: dict[str, Any] = tomllib.load(file)["project"]
    return table


def requirement_groups() -> dict[str, list[str]]:
    """pyproject.toml's requirements: the dependencies, then each extra."""
    return {"dependencies": project()["dependencies"], **project()["optional-dependencies"]}


def lock_lines(lock: Path) -> list[str]:
    """The lock's statements, continuation lines joined, comments left out."""
    statements: list[str] = []
    pending = ""
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            continue
        line = line.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
        elif pending or line:
            statements.append(pending + line)
            pending = ""
    return statements


def pins(lock: Path = LOCK) -> dict[str, Pin]:
    found: dict[str, Pin] = {}
    for statement in lock_lines(lock):
        requirement_text, *hash_options = statement.split(" --hash=")
        requirement = Requirement(requirement_text)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"not an exact pin: {statement[:80]}"
        name = canonicalize_name(requirement.name)
        assert name not in found, f"{name} pinned twice"
        found[name] = Pin(name, specifiers[0].version, requirement.marker, tuple(h.strip() for h in hash_options))
    return found


def environments() -> list[dict[str, str]]:
    """Marker environments for every Python and platform the lock is for."""
    result = []
    for python in PYTHONS:
        for platform, (system, os_name) in PLATFORMS.items():
            environment = dict(default_environment())
            environment.update(python_version=python.rsplit(".", 1)[0], python_full_version=python,
                               sys_platform=platform, platform_system=system, os_name=os_name,
                               implementation_name="cpython", platform_python_implementation="CPython")
            result.append(environment)
    return result


@pytest.mark.parametrize("lock", [LOCK, IMAGE_LOCK], ids=lambda lock: lock.name)
def test_every_package_is_pinned_exactly_with_sha256_hashes(lock: Path) -> None:
    locked = pins(lock)
    assert len(locked) > 30
    for pin in locked.values():
        assert pin.hashes, f"{pin.name} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), pin.name


def test_the_lock_was_made_from_this_pyproject() -> None:
    header = [line for line in LOCK.read_text(encoding="utf-8").splitlines() if line.startswith("#   ")]
    made_from = [line.removeprefix("#   ") for line in header]
    expected = [f"requires-python = {project()['requires-python']}"] + [
        f"{group} = {requirement}" for group, requirements in requirement_groups().items()
        for requirement in requirements]
    assert made_from == expected, RELOCK


@pytest.mark.parametrize(("lock", "group"), [(LOCK, group) for group in sorted(requirement_groups())]
                         + [(IMAGE_LOCK, "dependencies")], ids=lambda value: getattr(value, "name", value))
def test_the_lock_satisfies_every_requirement_on_every_python_and_platform(lock: Path, group: str) -> None:
    locked = pins(lock)
    for environment in environments():
        where = f"Python {environment['python_version']} on {environment['sys_platform']}"
        for text in requirement_groups()[group]:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            pin = locked.get(canonicalize_name(requirement.name))
            assert pin is not None and pin.applies(environment), f"{text} is not locked for {where}; {RELOCK}"
            assert requirement.specifier.contains(pin.version, prereleases=True), (
                f"{text} but the lock has {pin.version}; {RELOCK}")


def test_the_image_lock_has_the_versions_and_hashes_of_the_whole_lock() -> None:
    whole = pins()
    for name, pin in pins(IMAGE_LOCK).items():
        assert name in whole, f"{name} is in {IMAGE_LOCK.name} only; run ./dev lock"
        assert (pin.version, set(pin.hashes)) == (whole[name].version, set(whole[name].hashes)), (
            f"{name}: the locks disagree; run ./dev lock")


def test_this_virtualenv_was_installed_from_the_lock() -> None:
    """What ./dev installs is what the lock says, version for version."""
    environment = dict(default_environment())
    wrong = {}
    for pin in pins().values():
        if not pin.applies(environment):
            continue
        try:
            installed = importlib.metadata.version(pin.name)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != pin.version:
            wrong[pin.name] = f"{installed}, locked {pin.version}"
    assert not wrong, f"the virtualenv differs from requirements.lock (./dev reinstalls when it changes): {wrong}"
