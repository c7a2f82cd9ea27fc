"""Parameters of a message from the IdP, read strictly: each at most once.

A repeated ``code`` or ``state`` means the message was changed on the way (a copy placed
before or after the real one); which copy to believe is the question an attacker wants
answered wrongly, so none is believed and the message is refused whatever the order.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import MultiMapping


def repeated(parameters: MultiMapping[object], names: Iterable[str]) -> str | None:
    """The first of ``names`` that ``parameters`` carries more than once, or None."""
    # RFC 6749 3.1: "Request and response parameters MUST NOT be included more than once."
    return next((name for name in names if len(parameters.getall(name, ())) > 1), None)
