"""Pages that are not errors: sign-out confirmation, signed out, who am I.

The body is built by the caller from ``paragraph``/``table`` pieces, which escape
everything they are given; no raw text reaches the page unescaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from importlib import resources
from string import Template

from aiohttp import web

_TEMPLATE = Template(resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8"))


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def table(rows: Iterable[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def link_table(rows: Iterable[tuple[tuple[str, str], str]]) -> str:
    """Rows of ((label, href), value): the label links to the href."""
    cells = "".join(f'<tr><th><a href="{html.escape(href)}">{html.escape(label)}</a></th><td>{html.escape(v)}</td></tr>'
                    for (label, href), v in rows)
    return f"<table>{cells}</table>"


def post_button(action: str, label: str, fields: dict[str, str]) -> str:
    hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in fields.items())
    return (f'<form class="actions" method="post" action="{html.escape(action)}">{hidden}'
            f'<button type="submit">{html.escape(label)}</button></form>')


def link_button(href: str, label: str) -> str:
    return f'<p class="actions"><a class="button" href="{html.escape(href)}">{html.escape(label)}</a></p>'


def render(title: str, body: str, *, kicker: str = "ztproxy", status: int = 200) -> web.Response:
    page = _TEMPLATE.substitute(title=html.escape(title), kicker=html.escape(kicker), body=body)
    # The pipeline adds pages.SECURITY_HEADERS: a clickjacked sign-out button is still a button.
    return web.Response(status=status, text=page, content_type="text/html")
