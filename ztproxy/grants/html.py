"""The HTML of ``/.ztproxy/access/``: the request form, the requester's requests, the approver's queue.

Every value is escaped here; every form posts to the proxy's own origin with the session's
CSRF token. The page shell is :mod:`ztproxy.pages.info`'s (no scripts: the forms work without).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from ztproxy.grants.model import PENDING, GrantRequest, format_duration
from ztproxy.pages import info
from ztproxy.policy.criteria.grant import Grant

CSRF_FIELD = "csrf_token"


def when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _form(action: str, csrf: str, inner: str, *, form_id: str = "") -> str:
    attributes = f' id="{html.escape(form_id)}"' if form_id else ""
    return (f'<form class="actions" method="post" action="{html.escape(action)}"{attributes}>'
            f'<input type="hidden" name="{CSRF_FIELD}" value="{html.escape(csrf)}">{inner}</form>')


def _input(name: str, label: str, value: str = "", *, hidden: bool = False) -> str:
    if hidden:
        return f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
    return (f'<p><label>{html.escape(label)}<br><input type="text" name="{html.escape(name)}" '
            f'value="{html.escape(value)}" maxlength="500" style="width:100%"></label></p>')


def _button(name: str, label: str) -> str:
    return f'<button type="submit" name="{html.escape(name)}" value="1">{html.escape(label)}</button> '


def request_form(action: str, csrf: str, route: str, terms: Grant) -> str:
    longest = format_duration(terms.max_duration)
    default = format_duration(min(terms.max_duration, 3600.0))
    reason = "Reason (required)" if terms.reason_required else "Reason (optional)"
    return info.paragraph(f"Request access to {route}. An approver has to agree"
                          + (f" ({terms.approvals} approvers)" if terms.approvals > 1 else "")
                          + f"; access then lasts as long as you ask, up to {longest}.") + _form(
        action, csrf, _input("route", "", route, hidden=True) + _input("reason", reason)
        + _input("duration", f"Duration: 20s, 30m, 4h... (up to {longest})", default)
        + _button("request", "Request access"), form_id="request-access")


def own_requests(requests: Sequence[GrantRequest], now: float, csrf: str, action_of: str) -> str:
    if not requests:
        return info.paragraph("You have no access requests.")
    rows = []
    for request in requests:
        state = request.state_at(now)
        detail = {"pending": f"waiting for approval ({len(request.approvals)} of {request.needed}), "
                             f"expires {when(request.expires_at)}",
                  "active": f"until {when(request.ends_at)}"}.get(state, state)
        cell = f"<td>{html.escape(state)}: {html.escape(detail)}</td>"
        if state == PENDING:
            cancel = _form(action_of.format(id=request.id, action="cancel"), csrf, _button("cancel", "Cancel"))
            cell += f"<td>{cancel}</td>"
        rows.append(f"<tr><th>{html.escape(request.route)}</th><td>{html.escape(format_duration(request.duration))}"
                    f"</td>{cell}</tr>")
    return f'<table id="my-requests">{"".join(rows)}</table>'


def to_decide(requests: Iterable[GrantRequest], csrf: str, action_of: str) -> str:
    parts = []
    for request in requests:
        facts = info.table([("Who", request.requester_label), ("Application", request.route),
                            ("Why", request.reason or "-"), ("For", format_duration(request.duration)),
                            ("Approvals", f"{len(request.approvals)} of {request.needed}"),
                            ("Asked", when(request.created_at))])
        parts.append(facts + _form(action_of.format(id=request.id, action="decide"), csrf,
                                   _input("comment", "Comment (optional)") + _button("approve", "Approve")
                                   + _button("deny", "Deny"), form_id=f"decide-{request.id}"))
    return "".join(parts) or info.paragraph("No request is waiting for your decision.")


def to_end(requests: Iterable[GrantRequest], csrf: str, action_of: str) -> str:
    parts = []
    for request in requests:
        parts.append(info.table([("Who", request.requester_label), ("Application", request.route),
                                 ("Until", when(request.ends_at))])
                     + _form(action_of.format(id=request.id, action="revoke"), csrf,
                             _button("revoke", "End this access now"), form_id=f"revoke-{request.id}"))
    return "".join(parts)
