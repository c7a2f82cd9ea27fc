"""The documentation: the site builds with warnings as errors, and README.md's links lead somewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")


def test_the_site_builds_strict(tmp_path: Path) -> None:
    # mkdocs.yml says strict: a broken link, anchor or snippet, a page left out of the nav, or an
    # option config/example.yaml does not describe (docs/hooks.py) fails the build.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    reference = (tmp_path / "site" / "reference" / "index.html").read_text(encoding="utf-8")
    assert "server.limits.max_header_bytes" in reference  # generated at build time
    assert (tmp_path / "site" / "repo" / "config" / "example.yaml").is_file()


def test_every_relative_link_of_the_readme_names_a_file() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    targets = [target.split("#", 1)[0] for target in _LINK.findall(text)]
    relative = [target for target in targets if target and not re.match(r"[a-z][a-z0-9+.-]*:", target)]
    assert relative, "README.md links into docs/"
    missing = [target for target in relative if not (REPO / target).exists()]
    assert missing == []
    assert "docs/reference.md" in relative
