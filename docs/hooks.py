"""MkDocs hooks of ztproxy's documentation (mkdocs.yml ``hooks:``); nothing they make is committed.

- ``reference.md`` gets the configuration reference, generated from the schema and the comments
  of ``config/example.yaml`` by :func:`ztproxy.config.reference.markdown` where it says
  ``<!-- reference -->``. An option without a description fails the build.
- A page may link a file of the repository outside ``docs/`` (``../config/example.yaml``), as on
  GitHub: the file is added to the site under ``repo/`` and the link follows it there; a
  Markdown file becomes a page, whose own links are treated alike. A link to a file that does
  not exist is a warning, so ``mkdocs build --strict`` fails on it.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files, InclusionLevel

from ztproxy.config import reference

log = logging.getLogger("mkdocs.hooks.ztproxy")

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
MIRROR = "repo"  # where repository files appear in the site
MARKER = "<!-- reference -->"
_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _repo_path(page_src: str) -> Path:
    """Where a page's source lies in the repository."""
    if page_src.startswith(f"{MIRROR}/"):
        return REPO / page_src.removeprefix(f"{MIRROR}/")
    return DOCS / page_src


def _links(text: str) -> list[re.Match[str]]:
    """The Markdown links of ``text`` outside fenced code."""
    found: list[re.Match[str]] = []
    fences = [match.span() for match in _FENCE.finditer(text)]
    for match in _LINK.finditer(text):
        if not any(start <= match.start() < end for start, end in fences):
            found.append(match)
    return found


def _resolve(page_src: str, target: str) -> Path | None:
    """A relative link's file in the repository, or None for URLs and anchors."""
    if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return None
    path = target.split("#", 1)[0]
    if not path:
        return None
    return (_repo_path(page_src).parent / path).resolve()


def on_files(files: Files, config: Any) -> Files:
    todo = [file.src_uri for file in files if file.src_uri.endswith(".md")]
    while todo:
        src = todo.pop()
        text = _repo_path(src).read_text(encoding="utf-8")
        for match in _links(text):
            path = _resolve(src, match["target"])
            if path is None or path.is_relative_to(DOCS) or path.is_dir():
                continue
            if not path.is_file() or not path.is_relative_to(REPO):
                log.warning("%s links %r, which is not a file of the repository", src, match["target"])
                continue
            uri = f"{MIRROR}/{path.relative_to(REPO).as_posix()}"
            if files.get_file_from_path(uri) is None:
                files.append(File.generated(config, uri, abs_src_path=str(path),
                                            inclusion=InclusionLevel.NOT_IN_NAV))
                if uri.endswith(".md"):
                    todo.append(uri)
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    src = page.file.src_uri
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, reference.markdown())
    here = posixpath.dirname(src)

    fences = [fence.span() for fence in _FENCE.finditer(markdown)]

    def relink(match: re.Match[str]) -> str:
        target = match["target"]
        path = _resolve(src, target)
        if path is None or not path.is_relative_to(REPO) or any(a <= match.start() < b for a, b in fences):
            return match.group(0)
        anchor = "#" + target.split("#", 1)[1] if "#" in target else ""
        if path.is_dir():  # a folder: its README, else just the words
            if not (path / "README.md").is_file():
                return match["text"]
            path = path / "README.md"
        if path.is_relative_to(DOCS):
            uri = path.relative_to(DOCS).as_posix()
        else:
            uri = f"{MIRROR}/{path.relative_to(REPO).as_posix()}"
        return f"[{match['text']}]({posixpath.relpath(uri, here or '.')}{anchor})"

    return _LINK.sub(relink, markdown)
