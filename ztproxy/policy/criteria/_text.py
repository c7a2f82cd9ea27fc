"""Comparing names the way the criteria do."""

from __future__ import annotations

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(text: str) -> str:
    """Lowercase ASCII letters only.

    ``str.lower`` maps some non-ASCII letters onto ASCII ones (KELVIN SIGN -> "k"), which
    would let a look-alike address match a configured one.
    """
    return text.translate(_ASCII_LOWER)


def email_domain(email: str) -> str | None:
    """The folded domain of an address, or None when there is no "@"."""
    _, at, domain = email.rpartition("@")
    return fold(domain).rstrip(".") if at and domain else None
