"""Where criteria register: the rule field each is built from, and the sentences of its reasons.

Every criterion module calls :func:`register` beside its predicate, and
:mod:`ztproxy.policy.criteria` imports them all, so once that package is imported
:data:`CRITERIA` knows every criterion and :data:`SENTENCES` every reason's deny-page
sentence (those of :data:`ztproxy.policy.reasons.SENTENCES`, which no one criterion gives,
included). Compiling walks a rule's fields in the order of the schema and builds the
criterion registered under each one given (:func:`ztproxy.policy.compile.criteria_of`), so
adding a criterion is its module, its field in :mod:`ztproxy.config.rules` and its test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from ztproxy.policy import reasons
from ztproxy.policy.model import Criterion

Build = Callable[[Any], Criterion]  # from the value of the criterion's field in a rule

# By name: the rule field, dotted below a section ("users", "device.managed"). Written only by register.
CRITERIA: dict[str, Build] = {}
_sentences = dict(reasons.SENTENCES)
SENTENCES: Mapping[str, str] = MappingProxyType(_sentences)
"""Every reason a refusal can give -> its sentence on the deny page."""


def register(name: str, build: Build, sentences: Mapping[str, str]) -> None:
    """Register a criterion under its field's name, with the sentence of each reason it fails for.

    Several criteria may give one reason (every device condition says ``device-unknown``),
    always with the same sentence.
    """
    if name in CRITERIA:
        raise ValueError(f"criterion {name!r} is registered twice")
    for reason, sentence in sentences.items():
        if _sentences.get(reason, sentence) != sentence:
            raise ValueError(f"reason {reason!r} has two sentences")
    _sentences.update(sentences)
    CRITERIA[name] = build
