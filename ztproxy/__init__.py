"""ztproxy: an identity-aware reverse proxy, the policy enforcement point of a zero-trust network."""

__version__ = "0.1.0"
